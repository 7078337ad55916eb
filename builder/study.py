"""``make study``: every verdict at four training budgets (a budget ladder), beside the default report.

    python -m builder.study [--ladder cpu|course] [--jobs auto]

The tiers with claims (01, 05, 04, 03) run in the ``study`` profile: the course report's constant learning
rate 1e-3 and Adam (0.9, 0.999), under which a model trained for 5 epochs is exactly the first 5 epochs of
one trained for 20 (``lib.train.fit`` continues the longest shorter run in the cache instead of starting
again). Each rung of the ladder, shortest first, is built by ``builder.report`` into
``report/study/rung-<n>/`` (the same guarantees: a failed rung leaves that folder as it was). Then
``report/study/ladder.json`` holds each sub-claim's label and deciding number at every rung, next to the
default report's, and ``report/study/index.html`` shows them with a "stable" column.

Resumable: a rung whose manifest lists every notebook built with the same parameters from code that gives the
same numbers (``lib/``, the notebooks it runs, ``pyproject.toml`` and ``constraints.txt`` as at the commit that
built it, but for comments, docstrings and Markdown cells) is skipped; a stopped rung reruns, loading the models
already trained (the cache) and the scores already
computed (``lib.store.memo``). It is not resumed on a machine where precision 'auto' would train the ConvVAEs and
GANs in another precision than the rungs already built (bf16 on a CPU with AMX or AVX-512 BF16, fp32 without).
"""
from __future__ import annotations

import argparse
import html as _html
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from . import report as build
from . import prose

STUDY = build.REPORT / "study"
LADDERS = {
    # about 2.5 h on a 2-core Intel Xeon with AMX bf16, nearly 4 h on a 2-core AMD EPYC Zen 4 (docs/methods.md, the
    # budget ladder): 10x for the ConvVAE and the GAN (the top 3x the default profile's 20 epochs), 15x for the
    # β-VAE up to the course report's 15
    "cpu": {"ConvVAE": (2, 5, 10, 20), "BetaVAE": (1, 3, 8, 15), "GAN": (6, 15, 30, 60)},
    # the course report's own budgets at the top rung (a GPU's ladder)
    "course": {"ConvVAE": (25, 50, 125, 250), "BetaVAE": (1, 3, 8, 15), "GAN": (20, 50, 100, 200)},
    # the tests' ladder: the smoke profile's tiny data, two rungs (its cosine schedule trains each rung afresh)
    "smoke": {"ConvVAE": (1, 2), "BetaVAE": (1, 2), "GAN": (1, 2)},
}
PROFILE = {"cpu": "study", "course": "study", "smoke": "smoke"}
ORDER = ("01_vae_basic", "05_noisy_data", "04_beta_vae", "03_gan")  # 02 has no claims


def rung_params(ladder: dict[str, tuple[int, ...]], i: int) -> dict[str, dict[str, int]]:
    """The budget parameters of each notebook at rung ``i`` (0-based)."""
    c, b, g = (ladder[m][i] for m in ("ConvVAE", "BetaVAE", "GAN"))
    return {"01_vae_basic": {"epochs": c, "ablation_epochs": c}, "05_noisy_data": {"epochs": c},
            "04_beta_vae": {"epochs": b, "latent2_epochs": b}, "03_gan": {"epochs": g, "vae_epochs": c}}


# what can change a rung's numbers: the build's sources but the build itself (builder/ renders and schedules; a
# change there leaves the rungs built) and the notebooks no rung runs (02: no claims)
RESULT_PATHS = (*build.KERNEL_SOURCES,
                *(f":(exclude)notebooks/{nb}.ipynb" for nb in build.NOTEBOOKS if nb not in ORDER))


def changed_code(manifest: dict) -> list[str] | None:
    """The files of ``RESULT_PATHS`` whose code has changed since the rung was built (``prose.changed_code``)."""
    return prose.changed_code(manifest, RESULT_PATHS)


def _same_results_code(manifest: dict) -> bool:
    """Are the sources that can change a result as they were when the rung was built (``changed_code``)?"""
    return changed_code(manifest) == []


def _done(report: Path, params: dict[str, dict]) -> bool:
    """Has ``report`` every notebook of ``params`` built with these parameters from code that gives today's
    results (``_same_results_code``)?"""
    try:
        manifest = json.loads((report / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if not _same_results_code(manifest):
        return False
    final = build._relative(str(report))
    built = manifest.get("notebooks", {})
    return all(nb in built and built[nb].get("parameters") == p | {"output_dir": final} for nb, p in params.items())


def build_rung(report: Path, budgets: dict[str, dict[str, int]], jobs: str, profile: str = "study") -> int:
    """One rung: ``builder.report``'s checks, lock, execution and swap, with per-notebook parameters."""
    report.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{report.name}.tmp-", dir=report.parent))
    notebooks = list(budgets)
    params = {nb: build.plan([nb], profile, budgets[nb], tmp)[nb] for nb in notebooks}
    if _done(report, params):
        tmp.rmdir()
        print(f"=== {build._relative(str(report))}: already built from these sources, skipped ===", flush=True)
        return 0
    args = argparse.Namespace(notebook_dir=str(build.NB_DIR))
    with build.report_lock(report):
        build.read_report(report)
        return build._run(args, report, notebooks, profile, params, tmp, build.resolve_jobs(jobs, len(notebooks)))


def precisions(rung: Path) -> set[str]:
    """The precisions a rung's ConvVAEs and GANs trained in (their runs' specs; the β-VAE is always fp32)."""
    out = set()
    for path in rung.glob("runs/*/metrics.json"):
        spec = json.loads(path.read_text()).get("spec", {})
        if spec.get("model") in ("ConvVAE", "GAN") and spec.get("precision"):
            out.add(spec["precision"])
    return out


def mixed_precision(study: Path, kept: list[int], device: str) -> str | None:
    """Why building the other rungs here would train other models than the ``kept`` rungs (1-based), or None:
    another kind of device (CPU or GPU) or another precision ('auto' gives bf16 on one CPU, fp32 on another). A
    ladder compares budgets, so every rung must train the same models."""
    import torch

    from harness.config import resolve_precision

    kind = "cuda" if device.startswith("cuda") else "cpu"
    here = (kind, resolve_precision("auto", torch.device(device)))
    for i in kept:
        manifest = json.loads((study / f"rung-{i}" / "manifest.json").read_text())
        env = manifest.get("environment", {})
        theirs = ("cuda" if str(env.get("device", "cpu")).startswith("cuda") else "cpu", precisions(study / f"rung-{i}"))
        if theirs[1] and (theirs[0], theirs[1]) != (here[0], {here[1]}):
            p = "/".join(sorted(theirs[1]))
            where = ("a GPU" if theirs[0] == "cuda" else
                     "a CPU with AMX or AVX-512 BF16" if p == "bf16" else "a CPU without bf16 instructions")
            this = torch.cuda.get_device_name(device) if kind == "cuda" else build._cpu_name()
            return (f"rung {i} trained its ConvVAEs and GANs in {p} on {theirs[0].upper()} ({env.get('device')}, "
                    f"{env.get('cpu')}); here they would train in {here[1]} on {kind.upper()} ({this}), so a rung "
                    f"built here would judge other models than the rungs built. Build the remaining rungs on {where}, "
                    "or move report/study/ aside to build every rung here.")
    return None


def prune(rung: Path) -> None:
    """Keep a rung's pages, figures, verdicts, manifest and runs/*/metrics.json; drop its executed notebooks and
    saved samples (the pages show the same, and a rerun of make study writes them again from the cache)."""
    for path in [*rung.glob("*.ipynb"), *rung.glob("runs/*/samples.npz")]:
        path.unlink()


def ladder_doc(study: Path, name: str) -> dict:
    """ladder.json: the budgets, and each sub-claim's label and deciding number per rung and in the default report."""
    ladder = LADDERS[name]
    rungs, found = [], {}
    for i in range(len(ladder["ConvVAE"])):
        folder = study / f"rung-{i + 1}"
        if not (folder / "verdicts.json").exists():  # not built yet: the ladder so far
            rungs.append({"rung": i + 1, "epochs": {m: ladder[m][i] for m in ladder}, "folder": None})
            continue
        manifest = json.loads((folder / "manifest.json").read_text())
        rungs.append({"rung": i + 1, "epochs": {m: ladder[m][i] for m in ladder}, "folder": folder.name,
                      "wall_seconds": manifest.get("this_build_wall_seconds"),
                      "notebook_wall_seconds": {nb: v.get("wall_seconds") for nb, v in manifest["notebooks"].items()},
                      "machine": {k: manifest.get("environment", {}).get(k) for k in ("cpu", "cores", "device")},
                      "built_at": manifest.get("git_commit"), "code_changed_since": changed_code(manifest)})
        for f in json.loads((folder / "verdicts.json").read_text())["subclaims"]:
            row = found.setdefault(f["id"], {k: f[k] for k in ("claim", "claim_text", "id", "text", "metric", "notebook")}
                                   | {"labels": [None] * len(ladder["ConvVAE"]), "deciding": [None] * len(ladder["ConvVAE"])})
            row["labels"][i], row["deciding"][i] = f["label"], f["deciding"]
    default = {}
    if (build.REPORT / "verdicts.json").exists():
        default = {f["id"]: f for f in json.loads((build.REPORT / "verdicts.json").read_text())["subclaims"]}
    built = [r["rung"] - 1 for r in rungs if r["folder"]]
    for sid, row in found.items():
        row["default"] = default.get(sid, {}).get("label")
        labels = [row["labels"][i] for i in built]
        # stable: the same label at every rung; on a ladder not yet complete, at every rung built so far
        row["stable"] = None not in labels and len(set(labels)) == 1
        row["inconclusive_throughout"] = row["stable"] and labels[0] == "inconclusive"
    return {"ladder": name, "budgets": {m: list(v) for m, v in ladder.items()}, "rungs": rungs,
            "complete": len(built) == len(rungs),
            "schedule": ("constant lr 1e-3, Adam (0.9, 0.999): each rung's models continue the previous rung's"
                         if PROFILE.get(name, "study") == "study" else f"the {PROFILE[name]} profile's; each rung trains afresh"),
            "subclaims": sorted(found.values(), key=lambda r: (r["claim"], r["id"]))}


_GAIN = re.compile(r"gain ([+-]?[\d.]+(?:e[+-]?\d+)?)(?: \[([+-]?[\d.]+(?:e[+-]?\d+)?), ([+-]?[\d.]+(?:e[+-]?\d+)?)\])?")
_FLOOR = re.compile(r"floor ([\d.]+(?:e[+-]?\d+)?)")


def numbers(deciding: str | None) -> tuple[float, float | None, float | None, float] | None:
    """(gain, lo, hi, floor) read back from a tested sub-claim's deciding text (lib.claims writes it), or None."""
    g, f = _GAIN.search(deciding or ""), _FLOOR.search(deciding or "")
    if not g or not f or float(f.group(1)) == 0:
        return None
    lo, hi = (float(g.group(2)), float(g.group(3))) if g.group(2) else (None, None)
    return float(g.group(1)), lo, hi, float(f.group(1))


FAMILY = {"01_vae_basic": "ConvVAE", "05_noisy_data": "ConvVAE", "04_beta_vae": "BetaVAE", "03_gan": "GAN"}
COLOURS = {"kept": "#2a7", "refuted": "#c33", "inconclusive": "#888"}


def figure(study: Path, doc: dict) -> Path | None:
    """ladder.png: one panel per tested sub-claim, its gain in units of its effect floor (with the interval) against
    the training budget; a label is kept above both lines (0 and the floor), refuted below 0 or wholly below 1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in doc["subclaims"] if any(numbers(d) for d in s["deciding"])]
    if not rows:
        return None
    cols = 6
    fig, axes = plt.subplots(-(-len(rows) // cols), cols, figsize=(2.3 * cols, 1.9 * -(-len(rows) // cols)),
                             squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, s in zip(axes.flat, rows):
        epochs = doc["budgets"][FAMILY.get(s["notebook"], "ConvVAE")]
        for x, d, label in zip(epochs, s["deciding"], s["labels"]):
            n = numbers(d)
            if n is None:
                continue
            gain, lo, hi, floor = n
            colour = COLOURS.get(label, "#888")
            if lo is not None:
                ax.plot([x, x], [lo / floor, hi / floor], color=colour, lw=1.5)
            ax.plot(x, gain / floor, "o", color=colour, ms=4)
        ax.axhline(0, color="k", lw=0.6)
        ax.axhline(1, color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xticks(epochs, [str(e) for e in epochs], fontsize=7)
        ax.minorticks_off()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"{s['id']}: {s['text'][:34]}{'…' if len(s['text']) > 34 else ''}", fontsize=7)
    fig.supxlabel("training epochs (log scale)", fontsize=9)
    fig.supylabel("gain / effect floor (claim's direction > 0)", fontsize=9)
    fig.suptitle("Every tested sub-claim across the ladder" + ("" if doc.get("complete", True) else " (the rungs built so far)")
                 + ": green kept, red refuted, grey inconclusive; dotted: the floor", fontsize=10)
    fig.tight_layout()
    out = study / "ladder.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def machines_text(machines: dict[str, list[int]]) -> str:
    """'X' when one machine built every rung, else 'rungs 1, 2: X; rung 3: Y'."""
    if len(machines) == 1:
        return next(iter(machines))
    return "; ".join(f"rung{'s' if len(r) > 1 else ''} {', '.join(map(str, r))}: {m}" for m, r in machines.items())


def write_page(study: Path, doc: dict, wall: float | None, cpu: str) -> Path:
    """report/study/index.html: one row per sub-claim, one column per rung, the default report's label beside."""
    e = _html.escape
    marks = build.html.MARKS
    head = "".join(f"<th>rung {r['rung']}<br><small>" + ", ".join(f"{m} {n}" for m, n in r["epochs"].items())
                   + ("" if r["folder"] else "<br><i>not built yet</i>") + "</small></th>" for r in doc["rungs"])
    complete = doc.get("complete", True)
    same = "stable" if complete else "same so far"
    todo = [str(r["rung"]) for r in doc["rungs"] if not r.get("folder", True)]
    missing = f"rung {todo[0]} is" if len(todo) == 1 else f"rungs {', '.join(todo)} are"
    rows, last = [], None
    for s in doc["subclaims"]:
        claim = f"({e(s['claim'])}) {e(s['claim_text'])}" if s["claim"] != last else ""
        last = s["claim"]
        cells = "".join(
            f'<td class="label" title="{e(d or "")}"><a href="rung-{i + 1}/{e(s["notebook"])}.html#verdict-{e(s["id"])}">'
            f'{marks.get(l, "")} {e(l or "—")}</a></td>' if l else "<td>—</td>"
            for i, (l, d) in enumerate(zip(s["labels"], s["deciding"])))
        rows.append(f'<tr><td class="claim">{claim}</td><td>{e(s["id"])}: {e(s["text"])}</td>'
                    f'<td class="label">{marks.get(s["default"], "")} {e(s["default"] or "—")}</td>{cells}'
                    f'<td>{"inconclusive throughout" if s.get("inconclusive_throughout") else same if s["stable"] else "<b>changes</b>"}</td></tr>')
    took = f"{wall / 60:.0f} min" if wall else "see each rung's manifest.json"
    seeds = build.PROFILES["01_vae_basic"][PROFILE.get(doc["ladder"], "study")]["seeds"]
    power = (f"The arms here train at most {seeds} training seed{'s' if seeds > 1 else ''} each (the noisy and "
             "denoising models one, judged by the one-seed rule), so an interval paired by seed has at most "
             f"{seeds - 1} degree{'s' if seeds != 2 else ''} of freedom: a label can move between inconclusive and kept "
             "or refuted while the gain stays where it was. The figure shows the gains themselves.")
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>Budget ladder: the verdicts at four training budgets</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}table{{border-collapse:collapse;font-size:14px}}
td,th{{border:1px solid #ccc;padding:4px 6px;vertical-align:top}}td.claim{{font-weight:bold;max-width:220px}}
td.label{{white-space:nowrap}}.note{{color:#444}}</style></head><body>
<p><a href="../index.html">← the default report</a></p>
<h1>Budget ladder: the verdicts at four training budgets</h1>
<p class="note">The default report judges 5-epoch ConvVAEs, 8-epoch β-VAEs and 20-epoch GANs; the course report trained
250, 15 and 200. Here the notebooks with claims ran again in the <code>study</code> profile ({e(doc["schedule"])}) at
the four budgets in the column heads (epochs per model family), and every sub-claim was judged by the same rule
(<code>lib/claims.py</code>) at each. A label that is the same at every rung is <i>stable</i> (one that is
<i>inconclusive</i> at every rung is shown as such: the ladder could not decide it). The recipe is not the default
report's (its learning rate is constant, and its arms train two training seeds, its FIDs score 5,000 samples), so
the rung at the default's 5 ConvVAE epochs need not agree with the default column; the matched-rate sub-claims of
(a) and (b) are not on the ladder (it trains no matched-rate models). Hover a label for its
deciding number; click it for the notebook cell. Built in {took} on {e(cpu)}; the numbers are in
<code>ladder.json</code>.</p>
<p class="note">{power}</p>
{f'<p class="note"><b>Built from older code:</b> {e(stale)}</p>' if (stale := build.html.stale_text(doc)) else ""}{"" if complete else f'<p class="note"><b>The ladder is not complete:</b> {e(missing)} not built yet (<code>make study</code> '
 'builds it), so "same so far" holds only over the rungs shown.</p>'}
{'<p><img src="ladder.png" alt="gain over effect floor per sub-claim and budget" style="max-width:100%"></p>' if (study / "ladder.png").exists() else ""}
<table><tr><th>claim</th><th>sub-claim</th><th>default report</th>{head}<th>across budgets</th></tr>
{"".join(rows)}</table></body></html>
"""
    out = study / "index.html"
    out.write_text(page)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m builder.study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ladder", choices=sorted(LADDERS), default=None,
                    help="cpu (about 2.5 h on 2 cores with AMX bf16, nearly 4 h without AMX) or course "
                         "(the course report's budgets: a GPU); default: course where CUDA is available, else cpu")
    ap.add_argument("--jobs", default="auto", help="notebooks executed at a time (as make report)")
    ap.add_argument("--study-dir", default=str(STUDY), help=argparse.SUPPRESS)  # tests build elsewhere
    ap.add_argument("--nb", nargs="*", default=list(ORDER), help=argparse.SUPPRESS)  # tests: fewer notebooks
    ap.add_argument("--assemble", action="store_true",
                    help="only write ladder.json, ladder.png and index.html from the rungs already built")
    args = ap.parse_args(argv)
    import torch

    study = Path(args.study_dir).absolute()
    name = args.ladder or ("course" if torch.cuda.is_available() else "cpu")
    if args.assemble and args.ladder is None and (study / "ladder.json").exists():  # the ladder already there
        name = json.loads((study / "ladder.json").read_text()).get("ladder", name)
        name = name if name in LADDERS else "cpu"
    ladder = LADDERS[name]
    n = len(ladder["ConvVAE"])
    t0 = time.perf_counter()
    if not args.assemble:
        with tempfile.TemporaryDirectory() as scratch:  # plan() checks its output folder can be written
            kept = [i + 1 for i in range(n) if _done(study / f"rung-{i + 1}", {
                nb: build.plan([nb], PROFILE[name], rung_params(ladder, i)[nb], Path(scratch))[nb]
                for nb in ORDER if nb in args.nb})]
        if len(kept) < n and (why := mixed_precision(study, kept, "cuda" if torch.cuda.is_available() else "cpu")):
            print(f"error: {why}", file=sys.stderr)
            return 2
    for i in range(0 if args.assemble else n):
        budgets = rung_params(ladder, i)
        print(f"##### rung {i + 1} of {n}: " + ", ".join(f"{m} {ladder[m][i]} epochs" for m in ladder), flush=True)
        try:
            with build._sigterm_as_interrupt():  # SIGTERM stops the rung's kernels as Ctrl-C does
                code = build_rung(study / f"rung-{i + 1}", {nb: budgets[nb] for nb in ORDER if nb in args.nb},
                                  args.jobs, PROFILE[name])
        except build.ReportError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.code
        except KeyboardInterrupt as e:  # before the rung's notebooks ran (afterwards builder.report handles it)
            print(f"\n{build._interrupted_reason(e)}: rung {i + 1} stopped before it ran", file=sys.stderr)
            return 130
        if code:
            if code == 130:
                print(f"rung {i + 1} stopped; the rungs built and the models trained stay: `make study` resumes",
                      file=sys.stderr)
            return code
        prune(study / f"rung-{i + 1}")
    for rung in sorted(study.glob("rung-*")):
        if rung.is_dir():
            prune(rung)
    doc = ladder_doc(study, name)
    if not any(r["folder"] for r in doc["rungs"]):
        print(f"no rung of the {name} ladder is built in {study} yet: nothing to assemble (`make study` builds them)")
        return 0
    doc["wall_seconds"] = round(sum(float(r.get("wall_seconds") or 0) for r in doc["rungs"]), 1)  # the rungs' builds
    machines: dict[str, list[int]] = {}  # the machines that built the rungs (their manifests): one, or several
    for r in (r for r in doc["rungs"] if r["folder"]):
        m = r["machine"]
        machines.setdefault(f"{m.get('cpu')} ({m.get('cores')} cores, {m.get('device')})", []).append(r["rung"])
    doc["machines"] = machines
    if not args.assemble:
        doc["wall_seconds_this_run"] = round(time.perf_counter() - t0, 1)  # less than the above when resumed
    (study / "ladder.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    figure(study, doc)
    write_page(study, doc, doc["wall_seconds"], machines_text(machines))
    if study == STUDY.absolute() and (build.REPORT / "manifest.json").exists():
        # the default report's index links the ladder once there is one
        build.html.write_index(build.REPORT, prose.changed_code(json.loads((build.REPORT / "manifest.json").read_text())))
    print(f"ladder written to {study}: {len(doc['subclaims'])} sub-claims; the rungs' builds took "
          f"{doc['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
