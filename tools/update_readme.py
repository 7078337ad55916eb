"""Rewrite README.md's tier table (between the TIER-TABLE markers) from report/runs/*/metrics.json.

Run by `make report` after the notebooks, so the headline numbers in the README are the committed
report's numbers and cannot go stale by hand.
"""
from __future__ import annotations

import json
import statistics
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = [
    ("basic", "01_vae_basic", "final_samples"),
    ("intermediate", "02_vae_derivation", "iwae_vs_k"),
    ("advanced: GAN", "03_gan", "gan_vs_vae"),
    ("advanced: β-VAE", "04_beta_vae", "rate_distortion"),
    ("advanced: noisy data", "05_noisy_data", "samples"),
]


def _runs(report: Path) -> dict[str, list[dict]]:
    """notebook:label -> the metrics of every run (training seed) recorded under that label."""
    out: dict[str, list[dict]] = {}
    for p in sorted((report / "runs").glob("*/metrics.json")):
        doc = json.loads(p.read_text())
        out.setdefault(f"{doc['notebook']}:{doc['label']}", []).append(doc["metrics"])
    return out


def _ms(runs: list[dict], key: str, digits: int = 1) -> str:
    """mean ± SD over seeds (the value alone for one seed)."""
    v = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


def headline(nb: str, runs: dict[str, list[dict]]) -> str:
    if nb == "01_vae_basic":
        b = runs.get(f"{nb}:BCE+KLD")
        fids = ", ".join(f"{l} {_ms(runs[f'{nb}:{l}+KLD'], 'fid')}" for l in ("BCE", "MSE", "L1")
                         if f"{nb}:{l}+KLD" in runs)
        return (f"BCE VAE test −ELBO {_ms(b, 'test_bound', 2)} nats/image ({len(b)} seeds); classifier-FID {fids}"
                if b else "–")
    if nb == "02_vae_derivation":
        b = runs.get("01_vae_basic:BCE+KLD", [])
        b = [m for m in b if "test_iwae" in m and "iwae_images_bound" in m]
        return (f"on the same {b[0]['iwae_images']:,} test images: IWAE (k={b[0]['iwae_k']}) {_ms(b, 'test_iwae', 2)} vs "
                f"ELBO {_ms(b, 'iwae_images_bound', 2)} nats/image" if b else "–")
    if nb == "03_gan":
        g, v = runs.get("03_gan:GAN"), runs.get("01_vae_basic:BCE+KLD")
        s = f"GAN classifier-FID {_ms(g, 'fid')} ({len(g)} seeds), smallest class share {_ms([{'p': 100 * m['min_class_share']} for m in g], 'p')} %" if g else "–"
        return s + (f" (BCE VAE {_ms(v, 'fid')})" if g and v else "")
    if nb == "04_beta_vae":
        parts = [(k.split("beta=")[1], m) for k, m in runs.items()
                 if k.startswith(f"{nb}:beta=") and "collapse" not in k]
        return ("test −ELBO (the unweighted bound) of the model trained with " + ", ".join(
            f"β={b}: {_ms(m, 'test_bound')}" for b, m in parts) + " nats/image") if parts else "–"
    if nb == "05_noisy_data":
        parts = [(k.split(":noise ")[1], m) for k, m in runs.items() if k.startswith(f"{nb}:noise ")]
        parts.sort(key=lambda p: float(p[0].rstrip("%")))
        key = "fid_inverted" if parts and "fid_inverted" in parts[0][1][0] else "fid"
        name = "classifier-FID after inverting the noise channel" if key == "fid_inverted" else "classifier-FID"
        return name + " " + ", ".join(f"{a}: {_ms(m, key)}" for a, m in parts) if parts else "–"
    return "–"


def table(report: Path) -> str:
    runs = _runs(report)
    lines = ["| tier | notebook | report page | key figure | headline metric (default build) |",
             "|---|---|---|---|---|"]
    for tier, nb, fig in ROWS:
        figs = sorted((report / "figures").glob(f"{nb}_{fig}*.png")) or sorted((report / "figures").glob(f"{nb}_*.png"))
        thumb = f'<img src="{figs[0].relative_to(ROOT)}" width="160">' if figs else "–"
        lines.append(f"| {tier} | [`{nb}.ipynb`](notebooks/{nb}.ipynb) | [`report/{nb}.html`](report/{nb}.html) "
                     f"| {thumb} | {headline(nb, runs)} |")
    return "\n".join(lines)


def main() -> int:
    report = ROOT / "report"
    readme = ROOT / "README.md"
    manifest = json.loads((report / "manifest.json").read_text()) if (report / "manifest.json").exists() else {}
    if manifest.get("profile") != ["default"]:
        print(f"README tier table left as is: report/ is a {manifest.get('profile')} build, not the default one")
        return 0
    text = readme.read_text()
    new = re.sub(r"(<!-- TIER-TABLE:START -->\n).*?(\n<!-- TIER-TABLE:END -->)",
                 lambda m: m.group(1) + table(report) + m.group(2), text, flags=re.S)
    if new != text:
        readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
