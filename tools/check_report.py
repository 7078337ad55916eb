"""``make check-report``: re-execute the committed executed notebooks in report/ with nbval and check
that the cells tagged ``nbval-check-output`` (headline tables, verdicts) reproduce their committed
outputs. Run it after ``make report`` with the cache the build used (data/cache, or the same
``GENMNIST_CACHE``), so nothing retrains and it takes a few minutes; a difference means the committed
report no longer follows from the code. When models report/ was built from are missing from the cache, it stops
before running anything and says so (``CHECK_REPORT_TRAIN=1`` trains them instead).

The notebooks are copied to a temporary folder first, and their injected ``output_dir`` points
there, so the committed report/ is never written. The kernels get the thread count the build's kernels had
(``this_build_kernel_threads`` in report/manifest.json, as ``OMP_NUM_THREADS``; one already set wins), because a
number computed afresh rounds by it: with another count, 02's "84.733685 nats" came back as "84.733684".
Durations and machine paths are sanitised (tools/nbval_sanitize.cfg); so is float64 round-off.
``CHECK_REPORT_VERBOSE=1`` prints the whole diff of a failing cell.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "report"
EXTRA = ["-vvv"] if os.environ.get("CHECK_REPORT_VERBOSE") else []  # the whole diff of a failing cell


def kernel_env() -> dict[str, str]:
    """The environment of the checking kernels: the build's thread count, unless OMP_NUM_THREADS is set."""
    env = dict(os.environ)
    manifest = REPORT / "manifest.json"
    threads = json.loads(manifest.read_text()).get("this_build_kernel_threads") if manifest.exists() else None
    if threads and not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def missing_models(cache: Path | None = None) -> tuple[int, list[str]]:
    """How many models report/ was built from (the run ids of its runs/*/metrics.json), and those whose checkpoint
    is not in the model cache (``lib.store.CACHE``: data/cache, or ``GENMNIST_CACHE``): rerunning would train them."""
    from builder.report import run_ids
    from lib import store
    ids = run_ids(REPORT / "runs")
    cache = store.CACHE if cache is None else cache
    return len(ids), sorted(r for r in ids if not store.checkpoint_path(r, cache).exists())


def main(argv: list[str]) -> int:
    pages = sorted(REPORT.glob("[0-9][0-9]_*.ipynb"))
    if argv:
        pages = [p for p in pages if p.stem in argv or p.name in argv]
    if not pages:
        print("error: no executed notebooks in report/ (run `make report` first)", file=sys.stderr)
        return 2
    total, missing = missing_models()
    if missing and not os.environ.get("CHECK_REPORT_TRAIN"):
        from lib import store
        print(f"error: {len(missing)} of the {total} models report/ was built from are not in the model cache "
              f"{store.CACHE} (e.g. {missing[0]}), so the check would train them again (hours on a CPU) before it "
              "compares anything. Fix: set GENMNIST_CACHE to the cache `make report` used, or CHECK_REPORT_TRAIN=1 "
              "to train them.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="check-report-") as tmp:
        copies = []
        for page in pages:
            nb = json.loads(page.read_text())
            for cell in nb["cells"]:
                if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
                    src = "".join(cell["source"])
                    cell["source"] = src.replace('output_dir = "report"', f'output_dir = "{tmp}/out"')
            copy = Path(tmp) / page.name
            copy.write_text(json.dumps(nb))
            copies.append(str(copy))
        cmd = [sys.executable, "-m", "pytest", "-q", *EXTRA, "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
               "--nbval-sanitize-with", str(ROOT / "tools" / "nbval_sanitize.cfg"), "--nbval-cell-timeout", "3600",
               "--rootdir", tmp, *copies]
        env = kernel_env()
        print("checking", ", ".join(p.stem for p in pages), f"(kernel threads: {env.get('OMP_NUM_THREADS', 'all')})",
              flush=True)
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
