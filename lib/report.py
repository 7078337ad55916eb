"""The report: helpers the notebooks call (figures, runs, tables) and the ``make report`` runner.

    python -m lib.report --profile default [--nb 03_gan ...] [-p epochs 2 ...]

Notebooks are executed by papermill into a temporary folder; only when every selected notebook
succeeds are their outputs moved into ``report/`` (a failed build is kept as
``report.failed-<time>/`` with FAILED.txt, and the previous report is left untouched).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import NOTEBOOKS, PROFILE_NAMES, PROFILES, ROOT, ParameterError, resolve

REPORT = ROOT / "report"
NB_DIR = ROOT / "notebooks"
BIT_EQUALITY_NOTE = ("Numbers are reproducible bit for bit on the same machine, device and library versions "
                     "(tests check two smoke runs give identical metrics.json; on CUDA through "
                     "lib.config.deterministic_cuda, checked on an H200). Bit equality across devices "
                     "(CPU vs CUDA), thread counts or library versions is not promised.")


# --- used inside notebooks ------------------------------------------------------------------

class Reporter:
    """Writes one notebook's figures and runs under ``output_dir``."""

    def __init__(self, notebook: str, output_dir: Path):
        self.notebook = notebook
        self.out = Path(output_dir)
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        (self.out / "runs").mkdir(parents=True, exist_ok=True)

    def figure(self, fig, name: str):
        """Save ``fig`` as figures/<notebook>_<name>.png and return it (so the notebook shows it)."""
        path = self.out / "figures" / f"{self.notebook}_{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return fig

    def record(self, run, metrics: dict[str, Any], samples: torch.Tensor, label: str) -> Path:
        """runs/<run-id>/metrics.json and samples.npz (uint8 [N, 28, 28]) for one trained model."""
        d = self.out / "runs" / run.run_id
        d.mkdir(parents=True, exist_ok=True)
        history = [{k: v for k, v in row.items() if k != "train_seconds"} for row in run.history]
        doc = {"run_id": run.run_id, "notebook": self.notebook, "label": label, "spec": run.spec.key(),
               "metrics": _plain(metrics), "history": _plain(history)}
        (d / "metrics.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        np.savez_compressed(d / "samples.npz", samples=np.asarray(samples, dtype=np.uint8))
        return d


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, float):
        return round(x, 6)
    return x


def table(rows: list[dict[str, Any]], columns: list[str] | None = None, digits: int = 2) -> str:
    """A Markdown table (display it with IPython.display.Markdown)."""
    columns = columns or list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.{digits}f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# --- the runner -----------------------------------------------------------------------------

def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def source_files() -> list[Path]:
    return sorted([*(ROOT / "lib").glob("*.py"), *NB_DIR.glob("*.ipynb"), ROOT / "pyproject.toml",
                   ROOT / "constraints.txt"])


def sources_hash() -> str:
    h = hashlib.sha256()
    for p in source_files():
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        return "unknown"


def environment() -> dict[str, Any]:
    import matplotlib
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": np.__version__, "matplotlib": matplotlib.__version__, "platform": platform.platform(),
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": "cuda (" + torch.cuda.get_device_name(0) + ")" if torch.cuda.is_available() else "cpu",
    }


def plan(notebooks: list[str], profile: str, overrides: dict[str, Any], output_dir: Path) -> dict[str, dict]:
    """Validate every selected notebook's parameters before anything runs; return papermill parameters."""
    if profile not in PROFILE_NAMES:
        raise ParameterError(f"parameter 'profile' = {profile!r} is invalid: allowed one of {list(PROFILE_NAMES)}")
    params: dict[str, dict] = {}
    used: set[str] = set()
    for nb in notebooks:
        known = set(PROFILES[nb][profile]) | {"seed", "device", "precision", "train_subset", "test_subset",
                                               "n_samples", "iwae_k", "iwae_images", "classifier"}
        mine = {k: v for k, v in overrides.items() if k in known}
        used |= set(mine)
        resolve(nb, profile, output_dir=str(output_dir), **mine)
        params[nb] = {"profile": profile, "output_dir": str(output_dir), **mine}
    unused = sorted(set(overrides) - used)
    if unused:
        raise ParameterError(f"parameter(s) {unused} are not parameters of {notebooks}; "
                             "see `papermill --help-notebook notebooks/<name>.ipynb`")
    return params


def _show_final_paths(ipynb: Path, tmp: Path, report: Path) -> None:
    """The executed notebook shows where its files end up (report/), not the temporary build folder."""
    import nbformat

    final = str(report.relative_to(ROOT)) if report.is_relative_to(ROOT) else str(report)
    nb = nbformat.read(str(ipynb), as_version=4)
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = cell.source.replace(str(tmp), final)
        for out in cell.get("outputs", []):  # e.g. a printed config table
            if isinstance(out.get("text"), str):
                out["text"] = out["text"].replace(str(tmp), str(report))
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = value.replace(str(tmp), str(report))
    nbformat.write(nb, str(ipynb))


def _move_into_report(tmp: Path, notebooks: list[str], report: Path) -> None:
    report.mkdir(exist_ok=True)
    for sub in ("figures", "runs"):
        (report / sub).mkdir(exist_ok=True)
    for nb in notebooks:
        for old in (report / "figures").glob(f"{nb}_*"):
            old.unlink()
        for old in (report / "runs").glob("*/metrics.json"):
            if json.loads(old.read_text()).get("notebook") == nb:
                shutil.rmtree(old.parent)
        for ext in (".ipynb", ".html"):
            if (tmp / f"{nb}{ext}").exists():
                os.replace(tmp / f"{nb}{ext}", report / f"{nb}{ext}")
    for f in (tmp / "figures").glob("*"):
        os.replace(f, report / "figures" / f.name)
    for d in (tmp / "runs").glob("*"):
        dest = report / "runs" / d.name
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(d, dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default", help=f"one of {list(PROFILE_NAMES)}")
    ap.add_argument("--nb", action="append", default=[], help="notebook name(s), e.g. 03_gan (default: all five)")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a notebook parameter (YAML value), as papermill's -p")
    ap.add_argument("--report-dir", default=str(REPORT), help=argparse.SUPPRESS)
    ap.add_argument("--notebook-dir", default=str(NB_DIR), help=argparse.SUPPRESS)  # tests inject failures
    args = ap.parse_args(argv)

    notebooks = [n for part in args.nb for n in part.replace(",", " ").split()] or list(NOTEBOOKS)
    bad = [n.removesuffix(".ipynb") for n in notebooks if n.removesuffix(".ipynb") not in NOTEBOOKS]
    if bad:
        print(f"error: NB={bad} unknown; allowed {list(NOTEBOOKS)}", file=sys.stderr)
        return 2
    notebooks = [n.removesuffix(".ipynb") for n in notebooks]
    overrides = {name: _parse_value(value) for name, value in args.p}
    report = Path(args.report_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tmp = report.parent / f"report.tmp-{stamp}"
    try:
        params = plan(notebooks, args.profile, overrides, tmp)
    except ParameterError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"error: {e}", file=sys.stderr)
        return 2

    import papermill as pm

    from . import html

    walls: dict[str, float] = {}
    t_all = time.perf_counter()
    for nb in notebooks:
        print(f"=== {nb} (profile {args.profile}) ===", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(Path(args.notebook_dir) / f"{nb}.ipynb"), str(tmp / f"{nb}.ipynb"), parameters=params[nb],
                                kernel_name="python3", cwd=str(ROOT), log_output=True, progress_bar=False)
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - shown; the partial build is kept aside
            failed = report.parent / f"report.failed-{stamp}"
            os.replace(tmp, failed)
            (failed / "FAILED.txt").write_text(f"{nb} failed:\n{e}\n")
            print(f"\nerror: notebook {nb} failed; report/ was left untouched. Partial outputs: {failed}\n{e}",
                  file=sys.stderr)
            return 1
        walls[nb] = round(time.perf_counter() - t0, 1)
        _show_final_paths(tmp / f"{nb}.ipynb", tmp, report)
        html.export(tmp / f"{nb}.ipynb", tmp / f"{nb}.html")
        print(f"=== {nb} done in {walls[nb]:.0f} s ===", flush=True)

    _move_into_report(tmp, notebooks, report)
    shutil.rmtree(tmp, ignore_errors=True)
    manifest_path = report / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"notebooks": {}}
    for nb in notebooks:
        manifest["notebooks"][nb] = {"profile": args.profile, "parameters": params[nb] | {"output_dir": "report"},
                                     "wall_seconds": walls[nb], "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    manifest.update({
        "profile": sorted({v["profile"] for v in manifest["notebooks"].values()}),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "lib", "notebooks")),
        "sources_sha256": sources_hash(),
        "sources": [str(p.relative_to(ROOT)) for p in source_files()],
        "environment": environment(),
        "total_wall_seconds": round(sum(v["wall_seconds"] for v in manifest["notebooks"].values()), 1),
        "this_build_wall_seconds": round(time.perf_counter() - t_all, 1),
        "reproducibility": BIT_EQUALITY_NOTE,
    })
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    html.write_index(report)
    print(f"report written to {report} in {manifest['this_build_wall_seconds']:.0f} s "
          f"(total over notebooks {manifest['total_wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def verdict(claim: str, status: str, evidence: str) -> str:
    """One Markdown line: the seed's claim, the measured verdict (kept / partly kept / refuted), the numbers."""
    icon = {"kept": "✅", "partly kept": "◐", "refuted": "❌"}.get(status, "•")
    return f"- {icon} **{status}** — *{claim}* — {evidence}"
