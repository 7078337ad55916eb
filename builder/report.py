"""The ``make report`` runner (the helpers notebooks call are in ``harness.notebook``).

    python -m builder.report [--profile default] [--nb 03_gan ...] [-p epochs 2 ...] [--params "-p epochs 2"]

One build at a time: ``report.lock`` beside ``report/`` is held (flock) for the whole build, and a
second build started meanwhile stops at once naming the process that holds it (exit code 3).
Everything is checked before any notebook runs: the parameters of every selected notebook, and the
report folder itself (a folder, with readable ``runs/*/metrics.json`` and ``manifest.json``).

Notebooks are executed by papermill into a fresh temporary folder (``report.tmp-*``, one per run).
Only when every selected notebook succeeds is the new report assembled, in a staging copy of the old
one, and swapped in whole (one atomic exchange of the two folders on Linux, else two renames); so
``report/`` is at every moment either the old report or the new one. On any failure, Ctrl-C
included, ``report/`` is left exactly as it was and the failed build is kept as
``report.failed-<time>-<pid>/`` with FAILED.txt giving the reason.

Exit codes: 0 built; 1 a notebook (or assembling the report) failed; 2 a bad parameter or an unusable
report folder, before anything ran; 3 another build holds the lock; 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import difflib
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from . import html
from harness.config import _COMMON, NOTEBOOKS, PROFILE_NAMES, PROFILES, ROOT, ParameterError, resolve
from lib.progress import PROGRESS_FILE

REPORT = ROOT / "report"
NB_DIR = ROOT / "notebooks"
BIT_EQUALITY_NOTE = ("Numbers are reproducible bit for bit on the same machine, device and library versions "
                     "(tests check two smoke runs give identical metrics.json; on CUDA through "
                     "harness.config.deterministic_cuda, checked on an H200). Bit equality across devices "
                     "(CPU vs CUDA), thread counts or library versions is not promised.")


# --- the runner: parameters -----------------------------------------------------------------

def _parse_value(name: str, text: str):
    """A ``-p`` value read as YAML, so that lists work (``-p betas [1,8]``; papermill's own ``-p`` reads
    only numbers, True/False and None), and ``None`` as papermill reads it. Malformed YAML is a
    ParameterError naming the parameter, not a parser traceback."""
    import yaml

    if text.strip() == "None":  # as papermill's -p: the profile's value (YAML would read the string 'None')
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = "; ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
        mark = getattr(e, "problem_mark", None)
        where = f" at column {mark.column + 1}" if mark is not None else ""
        raise ParameterError(f"parameter {name!r} = {text!r} is invalid: it is not valid YAML "
                             f"({problem or type(e).__name__}{where}); allowed a YAML value, e.g. -p betas '[1, 8]'"
                             ) from None


def parse_params(text: str) -> list[tuple[str, str]]:
    """``make report``'s ``P`` ('-p epochs 2 -p betas [1,8]') as (name, value) pairs. The text is split
    into words as a shell would (shlex: quotes group words) but never run by one, so ``;``, ``$(...)``
    or ``|`` in it are plain characters, and anything but ``-p NAME VALUE`` groups is an error."""
    try:
        words = shlex.split(text or "")
    except ValueError as e:
        raise ParameterError(f"P = {text!r} is invalid: it cannot be split into words ({e}); allowed "
                             "'-p NAME VALUE' groups, a value with spaces in quotes: P=\"-p betas '[1, 8]'\"") from None
    pairs, i = [], 0
    while i < len(words):
        if words[i] in ("-p", "--parameters") and len(words) - i >= 3:
            pairs.append((words[i + 1], words[i + 2]))
            i += 3
            continue
        raise ParameterError(f"P = {text!r} is invalid: {' '.join(words[i:])!r} is not a '-p NAME VALUE' group; "
                             "allowed only '-p NAME VALUE' groups (as papermill's -p); P is never run by a shell, "
                             "so ';' or '&&' in it do not start another command")
    return pairs


def _no_output_dir(overrides: dict[str, Any]) -> None:
    if "output_dir" in overrides:
        raise ParameterError(
            f"parameter 'output_dir' = {overrides['output_dir']!r} is invalid here: make report decides where "
            "the outputs go (it builds in a temporary folder, then swaps the whole new report into report/). "
            "To run a notebook into another folder, use papermill directly, e.g. .venv/bin/papermill "
            "notebooks/03_gan.ipynb out/03_gan.ipynb -p profile smoke -p output_dir out")


def overrides_from(pairs: list[tuple[str, str]], profile: str | None) -> tuple[str, dict[str, Any]]:
    """(profile, overrides) from the ``-p`` pairs. ``-p profile X`` is ``--profile X`` (papermill's
    --help-notebook lists profile); ``-p output_dir`` is refused: make report decides where outputs go."""
    overrides = {name: _parse_value(name, value) for name, value in pairs}
    _no_output_dir(overrides)
    if "profile" in overrides:
        p = overrides.pop("profile")
        if p is not None:
            if profile and p != profile:
                raise ParameterError(f"parameter 'profile' = {p!r} is invalid: it disagrees with PROFILE / "
                                     f"--profile {profile!r}; give the profile once")
            profile = p
    profile = profile or "default"
    if profile not in PROFILE_NAMES:  # checked before the profile names a build folder (report-<profile>/)
        raise ParameterError(f"parameter 'profile' = {profile!r} is invalid: allowed one of {list(PROFILE_NAMES)}")
    return profile, overrides


def notebook_parameters(nb: str, nb_dir: Path = NB_DIR) -> list[str]:
    """The names in the notebook's ``parameters``-tagged cell, as papermill reads them."""
    import papermill as pm

    return list(pm.inspect_notebook(str(nb_dir / f"{nb}.ipynb")))


def plan(notebooks: list[str], profile: str, overrides: dict[str, Any], output_dir: Path,
         nb_dir: Path = NB_DIR) -> dict[str, dict]:
    """Validate every selected notebook's parameters before anything runs; return papermill parameters.
    A ``-p`` name that no selected notebook's parameters cell declares is refused here (papermill itself
    would only warn and the run would ignore it), with the closest known name as a hint."""
    if profile not in PROFILE_NAMES:
        raise ParameterError(f"parameter 'profile' = {profile!r} is invalid: allowed one of {list(PROFILE_NAMES)}")
    _no_output_dir(overrides)
    if overrides.get("profile", profile) != profile:
        raise ParameterError(f"parameter 'profile' = {overrides['profile']!r} is invalid: it disagrees with "
                             f"the profile {profile!r}; give the profile once")
    params: dict[str, dict] = {}
    declared = {nb: set(notebook_parameters(nb, nb_dir)) - {"profile", "output_dir"} for nb in notebooks}
    unknown = sorted(set(overrides) - set().union(*declared.values()) - {"profile"})
    if unknown:
        known = sorted(set().union(*declared.values()))
        hints = [f"{n!r} -> {close[0]!r}" for n in unknown if (close := difflib.get_close_matches(n, known, 1))]
        raise ParameterError(f"unknown parameter(s) {unknown} for {notebooks}; known: {known}"
                             + (f" (did you mean {', '.join(hints)}?)" if hints else "")
                             + "; see `papermill --help-notebook notebooks/<name>.ipynb`")
    for nb in notebooks:
        mine = {k: v for k, v in overrides.items() if k in declared[nb]}
        cfg = resolve(nb, profile, output_dir=str(output_dir), **mine)
        # the validated values ('1e-3' read as 0.001), except those resolve turns into objects or choices
        mine = {k: v if v is None or k in ("device", "precision") else cfg[k] for k, v in mine.items()}
        params[nb] = {"profile": profile, "output_dir": str(output_dir), **mine}
    return params


# what the notebooks' kernels load (git pathspecs): what a build's dirty flag and a study rung's staleness are about;
# builder/ is not among them (it schedules and renders in the build's own process, imported at its start)
KERNEL_SOURCES = ("lib", "harness", "notebooks", "pyproject.toml", "constraints.txt")


def source_files() -> list[Path]:
    return sorted([*(ROOT / "lib").glob("*.py"), *(ROOT / "harness").glob("*.py"), *(ROOT / "builder").glob("*.py"),
                   *NB_DIR.glob("*.ipynb"), ROOT / "pyproject.toml", ROOT / "constraints.txt"])


def sources_hash(files: list[Path] | None = None) -> str:
    h = hashlib.sha256()
    for p in source_files() if files is None else files:
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def code_state() -> tuple[bool | str, str]:
    """What the notebooks' kernels load, now: (``git_dirty()``, a hash of the ``KERNEL_SOURCES`` files)."""
    return git_dirty(), sources_hash([p for p in source_files() if p.relative_to(ROOT).parts[0] in KERNEL_SOURCES])


def built_dirty(at_start: tuple[bool | str, str]) -> bool | str:
    """A build's ``git_dirty``: the state at its start (``code_state``), or True when the code its kernels load
    changed while they ran (a commit or edit to lib/ or the notebooks during an hour-long build; not builder/)."""
    return at_start[0] if code_state() == at_start else True


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        return "unknown"


def git_dirty() -> bool | str:
    """Whether lib/, harness/, notebooks/ or the pinned dependencies differ from the commit; "unknown" where git cannot tell
    (no git, no checkout)."""
    status = _git("status", "--porcelain", "--", *KERNEL_SOURCES)
    return "unknown" if status == "unknown" else bool(status)


def _cpu_name() -> str:
    """The CPU's model name, with its family and model numbers where /proc/cpuinfo has them: a virtual machine
    may call two CPU generations by one name ("AMD EPYC": family 23 has no bf16 instructions, family 26 has)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                    if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    info = {k.strip(): v.strip() for k, v in info.items()}
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']}, model {info['model']})"
    return name


def environment() -> dict[str, Any]:
    import matplotlib
    import torchvision

    cpu = _cpu_name()
    return {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": np.__version__, "matplotlib": matplotlib.__version__, "platform": platform.platform(),
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": "cuda (" + torch.cuda.get_device_name(0) + ")" if torch.cuda.is_available() else "cpu",
    }


def _relative(path: str) -> str:
    """``path`` relative to the project root when it lies inside it (no machine's folders in report/)."""
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_absolute() and p.is_relative_to(ROOT) else str(path)


def _show_final_paths(ipynb: Path, tmp: Path, report: Path) -> None:
    """The executed notebook names where its files end up (report/), relative to the project root,
    and never the temporary build folder or another absolute path of the build machine."""
    import nbformat

    final = _relative(str(report))
    nb = nbformat.read(str(ipynb), as_version=4)
    for cell in nb.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = cell.source.replace(str(tmp), final)
        for out in cell.get("outputs", []):  # e.g. a printed config table
            if isinstance(out.get("text"), str):
                out["text"] = out["text"].replace(str(tmp), final).replace(str(ROOT) + "/", "")
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = value.replace(str(tmp), final).replace(str(ROOT) + "/", "")
    pm_meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if key in pm_meta:
            pm_meta[key] = _relative(str(pm_meta[key]).replace(str(tmp), str(report)))
    if "output_dir" in pm_meta.get("parameters", {}):
        pm_meta["parameters"]["output_dir"] = final
    nbformat.write(nb, str(ipynb))


# --- the runner: one build at a time, the old report read first, an atomic swap ------------

class ReportError(Exception):
    """The report folder cannot be updated safely; nothing was changed. ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C (SIGINT) is: the build stops and is kept aside."""


def lock_path(report: Path) -> Path:
    return report.with_name(report.name + ".lock")


@contextlib.contextmanager
def report_lock(report: Path):
    """Hold ``report.lock`` (``filelock``, beside the report folder) for the block, or raise ReportError
    (code 3) naming the process that holds it. The lock goes with the process (a killed build never
    leaves a stale lock); ``report.lock.holder`` names its holder while it is held (empty when free)."""
    path = lock_path(report)
    holder = path.with_name(path.name + ".holder")
    lock = FileLock(path, timeout=0)
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        try:
            who = holder.read_text(encoding="utf-8").strip()
        except OSError:
            who = ""
        raise ReportError(f"another build is writing {report}: the lock {path} is held by "
                          f"{who or 'a process (pid not yet written)'}. Wait for it to finish (or stop it with "
                          "Ctrl-C), then run again. Nothing was changed.", code=3) from None
    except OSError as e:
        raise ReportError(f"cannot create the lock file {path} ({e}); the folder that holds {report.name}/ "
                          "must be writable") from None
    try:
        argv0 = "python -m builder.report" if sys.argv[0].endswith(os.path.join("builder", "report.py")) else sys.argv[0]
        cmd = " ".join([argv0, *map(shlex.quote, sys.argv[1:])])
        holder.write_text(f"pid {os.getpid()} (started {time.strftime('%Y-%m-%d %H:%M:%S')}: {cmd})\n",
                          encoding="utf-8")
        try:
            yield path
        finally:
            holder.write_text("", encoding="utf-8")  # while still held: the next holder writes its own
    finally:
        lock.release()


def read_report(report: Path) -> dict[str, Any]:
    """Read and check what a build will update, before anything runs: ``report`` is a folder (or
    absent), every ``runs/*/metrics.json`` parses (its ``notebook`` says which runs a rebuild of that
    notebook replaces) and ``manifest.json`` is a JSON object. Returns {"runs": {dir: notebook or None},
    "manifest": {...}}; raises ReportError naming the file and the fix, having changed nothing."""
    if report.is_symlink() and not report.exists():
        raise ReportError(f"{report} is a broken symbolic link; remove it (rm {report}) and run again")
    if report.exists() and not report.is_dir():
        raise ReportError(f"{report} is not a folder (a file is in its place); make report writes a folder "
                          f"there. Move the file away (mv {report} {report}.bak) and run again. Nothing was changed.")
    runs: dict[str, str | None] = {}
    manifest: dict[str, Any] = {"notebooks": {}}
    if not report.exists():
        return {"runs": runs, "manifest": manifest}

    def unreadable(path: Path, why: str, fix: str) -> ReportError:
        return ReportError(f"{path} cannot be read ({why}); make report reads it before it replaces anything "
                           f"in {report}/. {fix}, then run again. Nothing was changed.")

    for p in sorted((report / "runs").glob("*/metrics.json")):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # ValueError: JSONDecodeError and UnicodeDecodeError
            raise unreadable(p, f"{type(e).__name__}: {e}", f"Restore it, or delete that run (rm -r {p.parent})") \
                from None
        if not isinstance(doc, dict):
            raise unreadable(p, f"it holds a JSON {type(doc).__name__}, not an object",
                             f"Restore it, or delete that run (rm -r {p.parent})")
        runs[p.parent.name] = doc.get("notebook")
    mpath = report / "manifest.json"
    if mpath.exists():
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise unreadable(mpath, f"{type(e).__name__}: {e}", f"Restore it (git checkout -- {mpath}) or delete it") \
                from None
        if not isinstance(manifest, dict) or not isinstance(manifest.setdefault("notebooks", {}), dict):
            raise unreadable(mpath, "it is not a JSON object with a 'notebooks' object",
                             f"Restore it (git checkout -- {mpath}) or delete it")
    return {"runs": runs, "manifest": manifest}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _copy_into(src: Path, dest: Path) -> None:
    _remove(dest)
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True)
    else:
        shutil.copy2(src, dest)


def _apply(staging: Path, tmp: Path, notebooks: list[str], runs: dict[str, str | None]) -> None:
    """Replace, in ``staging`` (a copy of the old report), what the rebuilt notebooks own (their pages,
    figures and runs) with the new build's files from ``tmp``; leave every other notebook's files."""
    for sub in ("figures", "runs", "verdicts"):
        (staging / sub).mkdir(exist_ok=True)
    for nb in notebooks:
        for old in (staging / "figures").glob(f"{nb}_*"):
            _remove(old)
        if (staging / "verdicts" / f"{nb}.json").exists():
            _remove(staging / "verdicts" / f"{nb}.json")
        for name, owner in runs.items():
            if owner == nb:
                _remove(staging / "runs" / name)
        for ext in (".ipynb", ".html"):
            if (tmp / f"{nb}{ext}").exists():
                _copy_into(tmp / f"{nb}{ext}", staging / f"{nb}{ext}")
    for f in sorted((tmp / "figures").glob("*")):
        _copy_into(f, staging / "figures" / f.name)
    for d in sorted((tmp / "runs").glob("*")):
        _copy_into(d, staging / "runs" / d.name)
    for f in sorted((tmp / "verdicts").glob("*.json")):
        _copy_into(f, staging / "verdicts" / f.name)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or file system does not offer it (the caller then falls back to two renames)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


@contextlib.contextmanager
def _signals_deferred():
    """While the block runs, SIGINT and SIGTERM are only recorded (in the list it yields), so the swap
    is never cut in half; the caller looks at the list afterwards."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield pending
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def swap_in(staging: Path, report: Path) -> None:
    """Make ``staging`` the report folder and delete the old one. Where the system offers it, one
    atomic exchange of the two folders; else rename the old one aside, rename staging in (on failure,
    the old one back). Either way ``report/`` is at every moment the old or the new complete report."""
    if not report.exists():
        os.rename(staging, report)
        return
    if _exchange(staging, report):
        shutil.rmtree(staging, ignore_errors=True)  # the old report, now at the staging path
        return
    aside = staging.with_name(staging.name + "-old")
    os.rename(report, aside)
    try:
        os.rename(staging, report)
    except BaseException:
        os.rename(aside, report)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _keep_failed(tmp: Path, report: Path, stamp: str, reason: str) -> Path:
    """Move the failed build ``tmp`` to report.failed-<time>-<pid>[-n]/ with FAILED.txt giving ``reason``."""
    failed = base = report.with_name(f"{report.name}.failed-{stamp}-{os.getpid()}")
    n = 1
    while failed.exists():  # the same process, the same second (tests calling main twice)
        n += 1
        failed = base.with_name(f"{base.name}-{n}")
    os.replace(tmp, failed)
    (failed / "FAILED.txt").write_text(reason.rstrip("\n") + "\n", encoding="utf-8")
    return failed


def _interrupted_reason(e: BaseException) -> str | None:
    """'interrupted (...)' when ``e`` is Ctrl-C / SIGINT / SIGTERM, here or in the kernel; else None."""
    if isinstance(e, Interrupted):
        return "interrupted (SIGTERM)"
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C / SIGINT)"
    if getattr(e, "ename", None) == "KeyboardInterrupt":  # papermill: the kernel itself was interrupted
        return "interrupted (KeyboardInterrupt in the kernel)"
    return None


@contextlib.contextmanager
def _sigterm_as_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _echo(path: Path, prefix: str, every: float = 1.0):
    """While the block runs, print the lines appended to ``path`` (the kernel's progress) to stdout."""
    stop = threading.Event()

    def follow():
        with open(path, encoding="utf-8") as f:
            f.seek(0, os.SEEK_END)
            while True:
                line = f.readline()
                if line:
                    print(prefix + line.rstrip("\n"), flush=True)
                elif stop.is_set():
                    return
                else:
                    stop.wait(every)

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=5)


# --- the runner: notebooks in parallel -------------------------------------------------------

# Which notebook a free kernel takes next: the longest first, and those that reuse 01's BCE models after 01 has
# trained them (a kernel that needs a model another is training waits for it: store.exclusive). With the
# per-notebook times of the cold default build on the 2-core Intel Xeon (aa2529d: 01 2,737 s, 05 1,843, 04 1,430,
# 03 808, 02 377) two kernels would end at 3,545 and 3,650 s in this order (lanes 01 -> 03 | 04 -> 05 -> 02), where
# the earlier order 01, 04, 03, 05, 02 ended at 3,114 and 4,081 s (tests/test_parallel.py replays both; a model,
# not a measurement: it takes each notebook's time as fixed and 05 to find 01's BCE models trained, as 01 trains
# them first, in about 750 s of its 2,737, and 05 starts after 04's 1,430).
ORDER = ("01_vae_basic", "04_beta_vae", "05_noisy_data", "03_gan", "02_vae_derivation")
# SIGTERM (how the runner stops a lane) and SIGINT become KeyboardInterrupt, so papermill shuts its kernel down on
# the way out instead of leaving it orphaned (holding the terminal's pipes)
# The kernels' own log lines stay out of the build's terminal: ipykernel warns on every start that its local TCP
# sockets are unencrypted, and logs an ERROR for the Ctrl-C papermill sends a finished kernel. A failing cell
# still fails the build (papermill reads it from the kernel's messages, not its log).
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]
_CHILD = ("import json, signal, sys\n"
          "import papermill as pm\n"
          "def stop(signum, frame):\n"
          "    raise KeyboardInterrupt\n"
          "signal.signal(signal.SIGTERM, stop)\n"
          "signal.signal(signal.SIGINT, stop)\n"
          "args = json.load(open(sys.argv[1]))\n"
          "try:\n"
          "    pm.execute_notebook(**args)\n"
          "except BaseException as e:\n"
          "    open(sys.argv[2], 'w').write(f'{type(e).__name__}: {e}')\n"
          "    sys.exit(130 if isinstance(e, KeyboardInterrupt) else 1)\n")


def resolve_jobs(jobs: str, n_notebooks: int) -> int:
    """``--jobs``: 'auto' -> 2 kernels at a time where there are two cores or more, each with half of them
    (two such kernels train more images per second than one with every core: make bench, "two kernels
    at once"), else 1; a number -> that many, at most one per notebook."""
    if jobs == "auto":
        n = 2 if (os.cpu_count() or 1) >= 2 else 1
    else:
        try:
            n = int(jobs)
        except ValueError:
            n = 0
        if n < 1:
            raise ParameterError(f"parameter 'jobs' = {jobs!r} is invalid: allowed 'auto' or an integer >= 1")
    return max(1, min(n, n_notebooks))


def kernel_threads(jobs: int) -> int:
    """Torch threads of each notebook's kernel: the user's OMP_NUM_THREADS where set, else the cores
    shared among the ``jobs`` kernels (with one kernel, every core: harness.config.set_threads)."""
    return int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1) // jobs)


def _execute_parallel(notebooks: list[str], params: dict[str, dict], nb_dir: Path, tmp: Path, jobs: int,
                      walls: dict[str, float]) -> None:
    """Execute ``notebooks`` ``jobs`` at a time, each by papermill in its own process whose kernel gets
    ``cores // jobs`` threads (OMP_NUM_THREADS; unless the user set it) and its own progress log. The
    first failure stops the others; every notebook that failed on its own is then named in one RuntimeError with
    its error (those stopped because of it are listed as stopped)."""
    import queue

    todo: queue.Queue = queue.Queue()
    for nb in sorted(notebooks, key=lambda n: ORDER.index(n)):
        todo.put(nb)
    threads = str(kernel_threads(jobs))
    procs: dict[str, subprocess.Popen] = {}
    failures: list[str] = []  # every notebook that failed on its own, in the order they failed
    stopped: set[str] = set()  # those the runner stopped because another had failed
    lock = threading.Lock()

    def lane() -> None:
        while not failures:
            try:
                nb = todo.get_nowait()
            except queue.Empty:
                return
            log, err, spec = (tmp / f".progress-{nb}.log", tmp / f".error-{nb}.txt", tmp / f".args-{nb}.json")
            log.touch()
            spec.write_text(json.dumps(dict(
                input_path=str(nb_dir / f"{nb}.ipynb"), output_path=str(tmp / f"{nb}.ipynb"), parameters=params[nb],
                kernel_name="python3", cwd=str(ROOT), log_output=True, progress_bar=False,
                extra_arguments=KERNEL_ARGS)))
            env = {**os.environ, PROGRESS_FILE: str(log), "OMP_NUM_THREADS": threads}
            print(f"=== {nb} (profile {params[nb]['profile']}; {env['OMP_NUM_THREADS']} threads) ===", flush=True)
            t0 = time.perf_counter()
            with _echo(log, f"[{nb}] "):
                with lock:
                    if failures:
                        return
                    procs[nb] = subprocess.Popen([sys.executable, "-c", _CHILD, str(spec), str(err)], cwd=ROOT, env=env)
                code = procs[nb].wait()
            if code != 0:
                with lock:
                    if nb in stopped and (code == 130 or code < 0):  # it ended as stopped, not by its own error
                        return
                    why = err.read_text(encoding="utf-8") if err.exists() else f"papermill exited with code {code}"
                    failures.append(f"{nb} failed:\n{why}")
                return
            walls[nb] = round(time.perf_counter() - t0, 1)
            print(f"=== {nb} done in {walls[nb]:.0f} s ===", flush=True)

    workers = [threading.Thread(target=lane, daemon=True) for _ in range(jobs)]
    try:
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            if failures:
                with lock:
                    for nb, p in procs.items():
                        if p.poll() is None:
                            stopped.add(nb)
                            p.terminate()
            for w in workers:
                w.join(timeout=0.5)
    finally:  # Ctrl-C / SIGTERM here: no kernel is left running
        with lock:
            failures.append("stopped")  # no lane starts another notebook
            for nb, p in procs.items():
                if p.poll() is None:
                    stopped.add(nb)
                    p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    failed = [f for f in failures if f != "stopped"]
    if failed:  # each notebook that failed on its own, then those stopped because of it, then those never started
        never = [nb for nb in notebooks if nb not in procs]
        raise RuntimeError("\n\n".join(failed)
                           + (f"\n\n(stopped when that failed: {', '.join(sorted(stopped))})" if stopped else "")
                           + (f"\n(not started: {', '.join(never)})" if never else ""))


def default_report_dir(args: argparse.Namespace) -> Path:
    """report/ for the default profile; report-<profile>/ beside it for any other, given as --profile or as
    -p profile (a bad profile or -p value is reported later, by _build, before anything runs)."""
    try:
        profile, _ = overrides_from([*map(tuple, args.p), *parse_params(args.params)], args.profile or None)
    except ParameterError:
        profile = args.profile or "default"
    return REPORT if profile == "default" else ROOT / f"report-{profile}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m builder.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, help=f"one of {list(PROFILE_NAMES)} (default: default)")
    ap.add_argument("--nb", action="append", default=[], help="notebook name(s), e.g. 03_gan (default: all five)")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override a notebook parameter (YAML value), as papermill's -p")
    ap.add_argument("--params", default="", metavar="TEXT",
                    help="more -p groups in one string, as make report's P='-p epochs 2 -p seed 1' "
                         "(split into words as a shell would, never run by one)")
    ap.add_argument("--jobs", default="1", metavar="N",
                    help="notebooks executed at a time, each kernel with cores/N threads: 'auto' (2 where "
                         "there are 2 cores or more) or a number (default: 1)")
    ap.add_argument("--report-dir", default=None, help=argparse.SUPPRESS)  # default: report/, report-<profile>/
    ap.add_argument("--notebook-dir", default=str(NB_DIR), help=argparse.SUPPRESS)  # tests inject failures
    args = ap.parse_args(argv)

    # only the default profile builds the committed report/; a smoke or full build goes beside it
    report = Path(args.report_dir or default_report_dir(args)).absolute()
    if report.is_symlink() and report.exists():
        report = report.resolve()  # update the folder the link points to; the link stays
    try:
        with _sigterm_as_interrupt():
            return _build(args, report)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt as e:  # before any notebook ran (afterwards _build keeps the build aside)
        print(f"\n{_interrupted_reason(e)}: stopped before anything was built; {report} was not changed",
              file=sys.stderr)
        return 130


def _build(args: argparse.Namespace, report: Path) -> int:
    """main's work: check the parameters, take the lock, check the report folder, then ``_run``."""
    notebooks = [n for part in args.nb for n in part.replace(",", " ").split()] or list(NOTEBOOKS)
    bad = [n.removesuffix(".ipynb") for n in notebooks if n.removesuffix(".ipynb") not in NOTEBOOKS]
    if bad:
        print(f"error: NB={bad} unknown; allowed {list(NOTEBOOKS)}", file=sys.stderr)
        return 2
    notebooks = list(dict.fromkeys(n.removesuffix(".ipynb") for n in notebooks))
    try:
        profile, overrides = overrides_from([*map(tuple, args.p), *parse_params(args.params)], args.profile or None)
    except ParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{report.name}.tmp-", dir=report.parent))  # unique to this run
    except OSError as e:
        raise ReportError(f"cannot create a build folder next to {report} ({e}); its parent must be writable") \
            from None
    with contextlib.ExitStack() as held:
        try:
            # Parameters first (a typo is reported even while another build runs), then the lock, then
            # the report folder as it is under the lock; all before any notebook runs.
            params = plan(notebooks, profile, overrides, tmp, Path(args.notebook_dir))
            jobs = resolve_jobs(str(args.jobs), len(notebooks))
            held.enter_context(report_lock(report))
            read_report(report)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, ParameterError):
                print(f"error: {e}", file=sys.stderr)
                return 2
            raise
        return _run(args, report, notebooks, profile, params, tmp, jobs)


def notebook_epochs(profile: str, params: dict[str, dict] | None = None) -> dict[str, dict[str, int]]:
    """Training work per notebook of a build in ``profile``: model-epochs per model family, counted as the
    notebooks train them. The BCE models 02, 03 and 05 share with 01 are counted in 01, or, in a build without 01,
    once in the first of them that trains them. With ``params`` (notebook -> its parameters, as ``plan`` makes
    them) only those notebooks, with those values; without, all five at the profile's values."""
    nbs = [nb for nb in NOTEBOOKS if params is None or nb in params]

    def p(nb: str) -> dict:
        return {**PROFILES[nb][profile], **(params or {}).get(nb, {})}

    work = {nb: {"ConvVAE": 0, "GAN": 0, "BetaVAE": 0} for nb in nbs}
    shared: set[int] = set()  # the epochs of 01's BCE models already counted
    if "01_vae_basic" in work:
        b = p("01_vae_basic")
        work["01_vae_basic"]["ConvVAE"] = ((b["seeds"] + (len(b["losses"]) - 1) * b["other_seeds"]) * b["epochs"]
                                           + b["ablation_epochs"] + len(b["matched_weights"]) * b["epochs"])
        shared.add(b["epochs"])
    for nb, key in (("05_noisy_data", "epochs"), ("03_gan", "vae_epochs"), ("02_vae_derivation", "epochs")):
        if nb in work and (e := p(nb)[key]) not in shared:  # 01's BCE models, trained here
            work[nb]["ConvVAE"] += PROFILES["01_vae_basic"][profile]["seeds"] * e
            shared.add(e)
    if "05_noisy_data" in work:
        n = p("05_noisy_data")
        work["05_noisy_data"]["ConvVAE"] += (sum(1 for a in n["noise_amounts"] if a > 0) * n["other_seeds"]
                                             + len(n["denoise_amounts"])) * n["epochs"]
    if "03_gan" in work:
        g = p("03_gan")
        work["03_gan"]["GAN"] = g["seeds"] * g["epochs"]
    if "04_beta_vae" in work:
        beta = p("04_beta_vae")
        work["04_beta_vae"]["BetaVAE"] = ((len(beta["betas"]) * beta["seeds"] + len(beta["collapse_betas"]))
                                          * beta["epochs"] + beta["latent2_epochs"])
    return work


def model_epochs(profile: str, params: dict[str, dict] | None = None) -> dict[str, int]:
    """``notebook_epochs`` summed over the notebooks: what the build's time estimate multiplies by a measured rate."""
    per = notebook_epochs(profile, params).values()
    return {m: sum(w[m] for w in per) for m in ("ConvVAE", "GAN", "BetaVAE")}


def cpu_seconds_per_epoch(threads: int, steps: int = 6) -> dict[str, float]:
    """Seconds one training epoch (60,000 images, batch 64) takes on this CPU, per model family: ``steps``
    optimiser steps of each timed here and now (after one warm-up step), at ``threads`` torch threads and the
    precision a notebook would choose ('auto'). One kernel alone: two at a time each run somewhat slower."""
    import math

    from harness.config import resolve_precision
    from lib.train import RunSpec, family

    cpu, before = torch.device("cpu"), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = {}
        for model, latent in (("ConvVAE", 32), ("BetaVAE", 10), ("GAN", 100)):
            precision = "fp32" if model == "BetaVAE" else resolve_precision("auto", cpu)
            fam = family(RunSpec(tag="estimate", model=model, latent_dim=latent, precision=precision), cpu)
            g = torch.Generator().manual_seed(0)
            x = fam.inputs(torch.rand(64, 1, 28, 28, generator=g))
            fam.step(x, g)  # oneDNN builds its kernels on the first call
            t0 = time.perf_counter()
            for _ in range(steps):
                fam.step(x, g)
            out[model] = (time.perf_counter() - t0) / steps * math.ceil(60_000 / 64)
        return out
    finally:
        torch.set_num_threads(before)


def training_estimate(profile: str, device: str = "auto", params: dict[str, dict] | None = None,
                      jobs: int = 1) -> str:
    """One line printed before a build trains: the training work of the build (model_epochs) at measured rates:
    report/cuda_check.json's runs trained together (fit_many) on a GPU; on a CPU, a few steps of each model
    timed on this very CPU (``cpu_seconds_per_epoch``; the smoke profile, whose work is seconds, skips it), with
    the work shared by ``jobs`` kernels. Scoring is not included. Over an hour, it names the quicker profile."""
    per_nb = notebook_epochs(profile, params)
    work = model_epochs(profile, params)
    share = min(_COMMON[profile]["train_subset"] or 60_000, 60_000) / 60_000  # smoke trains on a subset
    lanes = max(1, min(jobs, sum(1 for w in per_nb.values() if any(w.values()))))
    try:
        if torch.cuda.is_available() and device != "cpu":
            record = json.loads((REPORT / "cuda_check.json").read_text())
            rate = {m: min(r["seconds_per_model_epoch"] for r in record["together"] if r["model"] == m) for m in work}
            where, lanes = f"an {record['machine']['gpu']} (report/cuda_check.json, runs trained together)", 1
        elif profile == "smoke":
            return f"estimate: {sum(work.values()):,} model-epochs on {share:.0%} of the training images (seconds)"
        else:
            rate = cpu_seconds_per_epoch(kernel_threads(lanes))
            where = (f"this CPU ({_cpu_name()}; a few steps of each model timed just now, {lanes} kernel(s) of "
                     f"{kernel_threads(lanes)} thread(s))")
    except Exception as e:  # noqa: BLE001 - an estimate must never stop a build
        return f"estimate: {sum(work.values()):,} model-epochs to train; no measured rate to time them ({e!r})"
    seconds = {nb: share * sum(w[m] * rate[m] for m in w) for nb, w in per_nb.items()}
    minutes = max(sum(seconds.values()) / lanes, max(seconds.values(), default=0)) / 60  # no lane beats its longest
    parts = ", ".join(f"{work[m]:,} {m}" for m in work)
    took = f"{minutes:.0f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"
    line = (f"estimate: training {parts} model-epochs (profile {profile}, these parameters) takes about {took} on "
            f"{where}; scoring adds to it, and a cached run costs nothing"
            + (" (a study rung continues the previous rung's models where they are cached)" if profile == "study" else ""))
    if minutes > 60 and profile == "default":
        line += ("\n  That is over an hour here. `make report PROFILE=quick` gives a first look in minutes "
                 "(one training seed, a third of the images); Ctrl-C stops this build and keeps every finished model.")
    return line


def run_ids(runs_dir: Path) -> set[str]:
    """The distinct run ids a build recorded in ``runs_dir`` (its ``*/metrics.json``): the models it was built from."""
    ids = set()
    for p in Path(runs_dir).glob("*/metrics.json"):
        with contextlib.suppress(OSError, ValueError):
            run_id = json.loads(p.read_text()).get("run_id")
            if isinstance(run_id, str):
                ids.add(run_id)
    return ids


def models_trained(runs_dir: Path, since: float, cache: Path | None = None) -> dict[str, int]:
    """Of the models a build recorded in ``runs_dir`` (``run_ids``), how many it trained: those whose checkpoint
    in the model cache was written at or after ``since`` (``time.time()`` at the build's start). The others were
    loaded from the cache, trained by an earlier build or notebook run, so the build's wall time says little
    about training them."""
    from lib import store
    cache = store.CACHE if cache is None else Path(cache)
    ids = run_ids(runs_dir)
    trained = 0
    for run_id in ids:
        with contextlib.suppress(OSError):
            trained += store.checkpoint_path(run_id, cache).stat().st_mtime >= since
    return {"recorded": len(ids), "trained": trained}


def _run(args: argparse.Namespace, report: Path, notebooks: list[str], profile: str, params: dict[str, dict],
         tmp: Path, jobs: int = 1) -> int:
    """Execute the notebooks into ``tmp``; assemble the new report in a staging copy; swap it in."""
    import papermill as pm

    stamp = time.strftime("%Y%m%d-%H%M%S")
    walls: dict[str, float] = {}
    t_all, started = time.perf_counter(), time.time()
    stage = "starting"
    progress_log = tmp / ".progress.log"
    saved_progress = os.environ.get(PROGRESS_FILE)
    staging: Path | None = None
    devices = {str(p.get("device", "auto")) for p in params.values()}
    # the code the notebooks run, as it is when they start (a commit made during an hour-long build is not theirs)
    code_at_start = (_git("rev-parse", "HEAD"), sources_hash(), code_state())
    try:
        print(training_estimate(profile, "cpu" if devices == {"cpu"} else "auto", params, jobs), flush=True)
    except KeyboardInterrupt:  # it times a few training steps: Ctrl-C may land here, before anything ran
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        progress_log.touch()
        os.environ[PROGRESS_FILE] = str(progress_log)  # the kernels inherit it (lib.progress)
        if jobs > 1:
            stage = f"executing {', '.join(notebooks)} ({jobs} at a time)"
            _execute_parallel(notebooks, params, Path(args.notebook_dir), tmp, jobs, walls)
        for nb in notebooks:
            stage = nb
            if jobs == 1:
                print(f"=== {nb} (profile {profile}) ===", flush=True)
                t0 = time.perf_counter()
                with _echo(progress_log, f"[{nb}] "):
                    pm.execute_notebook(str(Path(args.notebook_dir) / f"{nb}.ipynb"), str(tmp / f"{nb}.ipynb"),
                                        parameters=params[nb], kernel_name="python3", cwd=str(ROOT),
                                        log_output=True, progress_bar=False, extra_arguments=KERNEL_ARGS)
                walls[nb] = round(time.perf_counter() - t0, 1)
                print(f"=== {nb} done in {walls[nb]:.0f} s ===", flush=True)
            _show_final_paths(tmp / f"{nb}.ipynb", tmp, report)
            html.export(tmp / f"{nb}.ipynb", tmp / f"{nb}.html")

        stage = "assembling the report"
        staging = Path(tempfile.mkdtemp(prefix=f"{report.name}.tmp-staging-", dir=report.parent))
        if report.exists():
            shutil.copytree(report, staging, symlinks=True, dirs_exist_ok=True)  # its mode too (copystat)
        else:
            staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make report/ private
        old = read_report(staging)
        _apply(staging, tmp, notebooks, old["runs"])
        manifest = old["manifest"]
        final = _relative(str(report))
        for nb in notebooks:
            manifest["notebooks"][nb] = {"profile": profile, "parameters": params[nb] | {"output_dir": final},
                                         "wall_seconds": walls[nb], "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        entries = [v for v in manifest["notebooks"].values() if isinstance(v, dict)]
        prose = manifest.get("prose")  # make pages' record: pages whose Markdown came from a later commit than their code
        if isinstance(prose, dict):  # the pages executed now carry their own commit's Markdown
            if left := sorted(set(prose.get("notebooks", [])) - set(notebooks)):
                prose["notebooks"] = left
            else:
                del manifest["prose"]
        manifest.update({
            "profile": sorted({str(v["profile"]) for v in entries if "profile" in v}),
            "git_commit": code_at_start[0],
            # dirty also when the code the kernels load changed while they ran
            "git_dirty": built_dirty(code_at_start[2]),
            "sources_sha256": code_at_start[1],
            "sources": [str(p.relative_to(ROOT)) for p in source_files()],
            "environment": environment(),
            "total_wall_seconds": round(sum(float(v.get("wall_seconds", 0)) for v in entries), 1),
            "this_build_wall_seconds": round(time.perf_counter() - t_all, 1),
            "this_build_models": models_trained(tmp / "runs", started),  # trained here vs loaded from the cache
            "this_build_jobs": jobs,  # notebooks executed at a time (their wall_seconds overlap when > 1)
            # each kernel's torch threads (environment.torch_threads is this runner's own)
            "this_build_kernel_threads": kernel_threads(jobs),
            "reproducibility": BIT_EQUALITY_NOTE,
        })
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        html.merge_verdicts(staging)
        html.write_index(staging)
        stage = "swapping the new report in"
        with _signals_deferred() as pending:
            swap_in(staging, report)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - shown; the build is kept aside
        if staging is not None and staging.exists() and report.exists():  # (never the only copy left)
            shutil.rmtree(staging, ignore_errors=True)
        why = _interrupted_reason(e)
        reason = (f"{stage} failed: {why} after {time.perf_counter() - t_all:.0f} s of the build.\n" if why else
                  f"{stage} failed:\n{type(e).__name__}: {e}\n")
        failed = _keep_failed(tmp, report, stamp, reason + f"{report} was left exactly as it was.\n")
        print(f"\nerror: {reason.rstrip()}\n{report} was left untouched. Partial outputs: {failed}", file=sys.stderr)
        return 130 if why else 1
    finally:
        if saved_progress is None:
            os.environ.pop(PROGRESS_FILE, None)
        else:
            os.environ[PROGRESS_FILE] = saved_progress
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"report written to {report} in {manifest['this_build_wall_seconds']:.0f} s "
          f"(total over notebooks {manifest['total_wall_seconds']:.0f} s)")
    if pending:
        print(f"interrupted ({signal.Signals(pending[0]).name}) while the new report was being swapped in: the "
              f"swap was completed first, so {report} is the complete new report", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
