"""Reliability, second pass (issue 15): make report's own instructions, one build at a time, an atomic
update of report/ that leaves it untouched on any failure (Ctrl-C included), values refused before
training rather than failing after it, unknown papermill parameters, the Makefile's quoting, divergence.

The build tests run real ``python -m builder.report`` processes on the smoke profile of 03_gan (the fastest
notebook), always with ``--report-dir`` under tmp_path: the real report/ is never touched.
"""
import fcntl
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from lib import config, data, notebook, train
from builder import report as R
from lib.config import ParameterError, parameter_names, resolve
from lib.train import RunSpec, fit

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _report_cmd(*args):
    return [sys.executable, "-m", "builder.report", *args]


def _report(*args, timeout=180):
    return subprocess.run(_report_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _sigint_default():
    # a test run in the background of a non-interactive shell inherits SIGINT ignored; the child must not
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(args, log: Path):
    out = open(log, "w")
    return subprocess.Popen(_report_cmd(*args), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_sigint_default)


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every path under ``folder`` with its bytes (files), its target (links) or 'dir', and the mode."""
    snap = {".": oct(folder.stat().st_mode)}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        snap[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
    return snap


def _old_report(folder: Path) -> Path:
    """A previous report: a page, figure and run of another notebook, a stale 03_gan run and figure,
    files other tools put there, a manifest; mode 0750."""
    (folder / "figures").mkdir(parents=True)
    (folder / "runs" / "old01").mkdir(parents=True)
    (folder / "runs" / "stale03").mkdir(parents=True)
    (folder / "01_vae_basic.html").write_text("previous page of 01")
    (folder / "figures" / "01_vae_basic_samples.png").write_bytes(b"previous figure of 01")
    (folder / "figures" / "03_gan_stale.png").write_bytes(b"stale figure of 03")
    (folder / "runs" / "old01" / "metrics.json").write_text(json.dumps(
        {"run_id": "old01", "notebook": "01_vae_basic", "label": "BCE+KLD", "metrics": {"fid": 1.5}}))
    (folder / "runs" / "old01" / "samples.npz").write_bytes(b"previous samples")
    (folder / "runs" / "stale03" / "metrics.json").write_text(json.dumps(
        {"run_id": "stale03", "notebook": "03_gan", "label": "GAN", "metrics": {"fid": 9.0}}))
    (folder / "bench.json").write_text('{"written by": "make bench"}\n')
    (folder / "manifest.json").write_text(json.dumps(
        {"notebooks": {"01_vae_basic": {"profile": "default", "wall_seconds": 5.0}}}))
    folder.chmod(0o750)
    return folder


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.glob("report.tmp*"))


def _lock(report: Path) -> Path:
    return report.with_name(report.name + ".lock")  # spelt out: R.lock_path must agree


def _lock_is_free(report: Path) -> bool:
    with open(_lock(report), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


# --- 1. the README's own instructions pass make report's plan step --------------------------

def _readme_parameter_strings() -> list[str]:
    """Every -p sequence the README shows: P="..." values and `...` spans, and the Makefile's help."""
    texts = re.findall(r'P="([^"]*-p [^"]*)"', README.read_text())
    texts += [t for t in re.findall(r"`([^`]*)`", README.read_text()) if t.startswith("-p ")]
    help_line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "variables:" in line)
    texts += re.findall(r"P='([^']*-p [^']*)'", help_line)  # make help's example
    return sorted(set(texts))


def test_the_readme_shows_parameter_examples():
    texts = _readme_parameter_strings()
    assert "-p lr_schedule constant -p lr 1e-3 -p adam_beta2 0.999" in texts and "-p betas [1,8] -p epochs 3" in texts


@pytest.mark.parametrize("text", _readme_parameter_strings())
def test_every_parameter_spelling_in_the_readme_passes_the_plan(text, tmp_path):
    pairs = R.parse_params(text)
    if any(name.isupper() for name, _ in pairs):  # the `-p NAME VALUE` placeholder
        return
    profile, overrides = R.overrides_from(pairs, None)
    names = set(overrides)
    notebooks = [nb for nb in config.NOTEBOOKS if names <= set(parameter_names(nb))]
    assert notebooks, f"no notebook takes all of {sorted(names)}"
    try:
        params = R.plan(notebooks, profile, overrides, tmp_path / "out")
    except ParameterError as e:
        if overrides.get("device") == "cuda" and not torch.cuda.is_available():
            assert "no CUDA GPU is available" in str(e)  # the README says so
            return
        raise
    if "lr" in overrides:
        assert all(params[nb]["lr"] == float(overrides["lr"]) for nb in notebooks)  # 0.001, not '1e-3'


def test_make_report_reads_the_readmes_lr_spelling_as_a_number():
    """The README's own instruction through make: lr 1e-3 passes; the run stops at the deliberately bad
    precision, which validate checks after lr, so no training starts."""
    r = subprocess.run(["make", "report", "NB=01_vae_basic", "P=-p lr_schedule constant -p lr 1e-3 -p precision fp64"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "parameter 'precision' = 'fp64' is invalid" in r.stderr and "'lr'" not in r.stderr


def test_malformed_yaml_names_the_parameter(tmp_path):
    r = _report("--nb", "04_beta_vae", "-p", "betas", "[1,2", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2
    assert "parameter 'betas' = '[1,2' is invalid: it is not valid YAML (" in r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(ParameterError, match=r"parameter 'betas' = '\[1,2' is invalid: it is not valid YAML \("):
        R.overrides_from(R.parse_params("-p betas [1,2"), None)


# --- 2. one build at a time; report/ checked first, swapped whole, untouched on failure -----

@pytest.mark.notebooks
def test_a_second_build_refuses_while_one_holds_the_lock_and_the_first_completes(tmp_path, mnist_raw):
    report = _old_report(tmp_path / "report")
    before = _snapshot(report)
    args = ["--nb", "03_gan", "--profile", "smoke", "--report-dir", str(report)]
    first = _spawn(args, tmp_path / "first.log")
    try:
        lock = _lock(report)
        assert getattr(R, "lock_path", _lock)(report) == lock
        deadline = time.monotonic() + 120
        holder = lock.with_name(lock.name + ".holder")  # who holds it (filelock's own file stays empty)
        while not (holder.exists() and f"pid {first.pid} " in holder.read_text()):
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the first build never took the lock"
            time.sleep(0.2)
        t0 = time.monotonic()
        second = _report(*args)
        assert first.poll() is None, "the first build must still hold the lock while the second one is refused"
        assert second.returncode == 3, second.stderr
        assert f"the lock {lock} is held by pid {first.pid} " in second.stderr
        assert "===" not in second.stdout and time.monotonic() - t0 < 60
        assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
    log = (tmp_path / "first.log").read_text()
    assert "=== 03_gan done" in log and "report written to" in log
    after = _snapshot(report)
    # the other notebook's files and what other tools wrote: byte for byte as they were
    for kept in (".", "01_vae_basic.html", "figures/01_vae_basic_samples.png", "runs/old01/metrics.json",
                 "runs/old01/samples.npz", "bench.json"):
        assert after[kept] == before[kept], kept
    # 03_gan's stale files replaced by the new build's
    assert "runs/stale03" not in after and "figures/03_gan_stale.png" not in after
    new_runs = [p for p in (report / "runs").glob("*/metrics.json") if json.loads(p.read_text())["notebook"] == "03_gan"]
    assert new_runs and all((p.parent / "samples.npz").exists() for p in new_runs)
    assert list((report / "figures").glob("03_gan_*.png"))
    for page in ("03_gan.html", "03_gan.ipynb", "index.html", "assets/mathjax/tex-svg-full.js"):
        assert (report / page).is_file(), page
    assert "report.tmp-" not in (report / "03_gan.ipynb").read_text()  # no temporary build path inside
    manifest = json.loads((report / "manifest.json").read_text())
    assert manifest["notebooks"]["01_vae_basic"] == {"profile": "default", "wall_seconds": 5.0}
    assert manifest["notebooks"]["03_gan"]["profile"] == "smoke" and manifest["profile"] == ["default", "smoke"]
    assert _leftovers(tmp_path) == [] and not list(tmp_path.glob("report.failed-*"))
    assert lock.read_text() == "" and _lock_is_free(report)


@pytest.mark.parametrize("damage", ["metrics.json", "manifest.json", "metrics-not-an-object", "report-is-a-file"])
def test_an_unusable_report_folder_fails_before_anything_runs_or_changes(tmp_path, damage):
    report = tmp_path / "report"
    if damage == "report-is-a-file":
        report.write_text("not a folder")
        before = report.read_bytes()
        expected = "is not a folder"
    else:
        _old_report(report)
        if damage == "metrics.json":
            (report / "runs" / "old01" / "metrics.json").write_text('{"notebook": "01_vae_basic", trunc')
            expected = f"{report / 'runs' / 'old01' / 'metrics.json'} cannot be read (JSONDecodeError"
        elif damage == "manifest.json":
            (report / "manifest.json").write_bytes(b"\xff\xfe not json")
            expected = f"{report / 'manifest.json'} cannot be read ("
        else:
            (report / "runs" / "stale03" / "metrics.json").write_text("[1, 2]")
            expected = "it holds a JSON list, not an object"
        before = _snapshot(report)
    r = _report("--nb", "03_gan", "--profile", "smoke", "--report-dir", str(report))
    assert r.returncode == 2, r.stdout + r.stderr
    assert expected in r.stderr and "Nothing was changed" in r.stderr
    assert "===" not in r.stdout, "no notebook may run"
    assert (report.read_bytes() if damage == "report-is-a-file" else _snapshot(report)) == before
    assert _leftovers(tmp_path) == [] and not list(tmp_path.glob("report.failed-*"))


def _sleeping_03_gan(nb_dir: Path, marker: Path) -> Path:
    """03_gan with a cell after setup that writes the kernel's pid to ``marker`` and sleeps."""
    nb_dir.mkdir()
    nb = nbformat.read(str(ROOT / "notebooks" / "03_gan.ipynb"), as_version=4)
    nb.cells.insert(3, nbformat.v4.new_code_cell(
        f"import os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)"))
    nbformat.write(nb, str(nb_dir / "03_gan.ipynb"))
    return nb_dir


@pytest.mark.notebooks
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_build_says_so_and_leaves_report_untouched(tmp_path, mnist_raw, sig):
    report = _old_report(tmp_path / "report")
    before = _snapshot(report)
    marker = tmp_path / "kernel.pid"
    nb_dir = _sleeping_03_gan(tmp_path / "notebooks", marker)
    proc = _spawn(["--nb", "03_gan", "--profile", "smoke", "--report-dir", str(report), "--notebook-dir",
                   str(nb_dir)], tmp_path / "build.log")
    kernel = None
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text()):
            assert proc.poll() is None, (tmp_path / "build.log").read_text()
            assert time.monotonic() < deadline, "the notebook never reached the sleeping cell"
            time.sleep(0.2)
        kernel = int(marker.read_text())
        os.kill(proc.pid, sig)  # what Ctrl-C in the terminal sends (the kernel runs in its own session)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "build.log").read_text()
    assert rc == 130, log
    failed = list(tmp_path.glob("report.failed-*"))
    assert len(failed) == 1 and re.fullmatch(rf"report\.failed-\d{{8}}-\d{{6}}-{proc.pid}", failed[0].name)
    reason = (failed[0] / "FAILED.txt").read_text()
    assert reason.startswith("03_gan failed: interrupted (") and ("SIGTERM" in reason) == (sig == signal.SIGTERM)
    assert "interrupted" in log
    assert _snapshot(report) == before
    assert _leftovers(tmp_path) == [] and _lock_is_free(report)
    deadline = time.monotonic() + 30  # the kernel follows its parent (ipykernel's parent poller)
    while time.monotonic() < deadline:
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.kill(kernel, signal.SIGKILL)
        pytest.fail(f"the kernel (pid {kernel}) outlived the interrupted build")


def _failing_notebook(nb_dir: Path) -> Path:
    nb_dir.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise RuntimeError('fails at once')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(nb_dir / "03_gan.ipynb"))
    return nb_dir


def test_builds_started_in_the_same_second_never_share_a_folder(tmp_path, monkeypatch, mnist_raw, capsys):
    """The clock frozen at one second: a rejected build leaves alone the folder a build of that second
    would once have used (report.tmp-<time>, shared), and two failing builds keep two failed folders."""
    monkeypatch.setattr(R.time, "strftime", lambda fmt, *a: "20250101-000000")
    report = tmp_path / "report"
    other = tmp_path / "report.tmp-20250101-000000"  # another build's folder under the old naming
    other.mkdir()
    (other / "03_gan.ipynb").write_text("another build's notebook")
    assert R.main(["--nb", "03_gan", "-p", "epochs", "0", "--report-dir", str(report)]) == 2
    assert (other / "03_gan.ipynb").read_text() == "another build's notebook"
    nb_dir = _failing_notebook(tmp_path / "notebooks")
    for _ in range(2):
        assert R.main(["--nb", "03_gan", "--profile", "smoke", "--report-dir", str(report),
                       "--notebook-dir", str(nb_dir)]) == 1
    assert "fails at once" in capsys.readouterr().err
    failed = sorted(tmp_path.glob("report.failed-*"))
    assert len(failed) == 2 and all("03_gan failed:" in (f / "FAILED.txt").read_text() for f in failed)
    assert _leftovers(tmp_path) == [other.name] and not report.exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_swap_in_replaces_the_whole_folder(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(R, "_exchange", lambda a, b: False)
    report, staging = tmp_path / "report", tmp_path / "report.tmp-staging-x"
    (report / "sub").mkdir(parents=True)
    (report / "sub" / "old.txt").write_text("old")
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "new.txt").write_text("new")
    R.swap_in(staging, report)
    assert _snapshot(report) == {".": _snapshot(report)["."], "sub": "dir", "sub/new.txt": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    R.swap_in(fresh, tmp_path / "first-report")  # no old report: one rename
    assert (tmp_path / "first-report").is_dir() and not fresh.exists()


def test_swap_in_puts_the_old_report_back_when_the_second_rename_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "_exchange", lambda a, b: False)
    report, staging = tmp_path / "report", tmp_path / "report.tmp-staging-x"
    report.mkdir()
    (report / "page.html").write_text("old page")
    staging.mkdir()
    (staging / "page.html").write_text("new page")
    real = os.rename

    def rename(src, dst):
        if Path(src) == staging:
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(R.os, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        R.swap_in(staging, report)
    assert (report / "page.html").read_text() == "old page" and (staging / "page.html").read_text() == "new page"


# --- 4. values that passed validation and failed after training ----------------------------

@pytest.mark.parametrize("nb, kwargs, pattern", [
    ("03_gan", {"n_samples": 100}, r"'n_samples' = 100 is invalid: allowed an integer in \[129, 100000\] \(the FID"),
    ("01_vae_basic", {"n_samples": 128}, r"'n_samples' = 128 .*\[129, 100000\]"),
    ("01_vae_basic", {"seed": 2**32 - 2, "seeds": 4}, r"'seeds' = 4 is invalid: allowed a count that keeps seed \+ seeds - 1"),
    ("04_beta_vae", {"seeds": 0}, r"'seeds' = 0 is invalid: allowed an integer in \[1, 100\]"),
    ("04_beta_vae", {"collapse_betas": [0.0]}, r"'collapse_betas' = 0.0 is invalid: allowed numbers > 0"),
    ("01_vae_basic", {"n_samples": 1_000_000}, r"'n_samples' = 1000000 .*\[129, 100000\]"),
    ("01_vae_basic", {"iwae_k": 0}, r"'iwae_k' = 0 .*\[1, 100000\]"),
    ("01_vae_basic", {"iwae_k": 10**6}, r"'iwae_k' = 1000000 .*\[1, 100000\]"),
    ("01_vae_basic", {"iwae_images": 0}, r"'iwae_images' = 0 .*\[2, 10000\]"),
    ("02_vae_derivation", {"iwae_images": 1}, r"'iwae_images' = 1 .*\[2, 10000\]"),
    ("02_vae_derivation", {"mc_samples": 10**8}, r"'mc_samples' = 100000000 .*\[1000, 10000000\]"),
    ("02_vae_derivation", {"mc_samples": 10}, r"'mc_samples' = 10 .*\[1000, 10000000\]"),
    ("02_vae_derivation", {"iwae_ks": [5], "iwae_k": 5}, r"'iwae_ks' = \[5\] .*at least two different k"),
    ("03_gan", {"seed": -1}, r"'seed' = -1 .*\[0, 4294967295\] \(NumPy's global seed takes 32 bits\)"),
    ("03_gan", {"seed": 2**32}, r"'seed' = 4294967296 .*\[0, 4294967295\]"),
    ("03_gan", {"seed": 2**63}, r"'seed' = 9223372036854775808 .*\[0, 4294967295\]"),
    ("03_gan", {"seed": 1.5}, r"'seed' = 1.5 .*integer in"),
    ("01_vae_basic", {"train_subset": 60_001}, r"'train_subset' = 60001 .*None or an integer in \[1, 60000\]"),
    ("01_vae_basic", {"train_subset": 0}, r"'train_subset' = 0 .*\[1, 60000\]"),
    ("01_vae_basic", {"test_subset": 10_001}, r"'test_subset' = 10001 .*None or an integer in \[129, 10000\]"),
    ("01_vae_basic", {"test_subset": 100}, r"'test_subset' = 100 .*\[129, 10000\] \(the FID's reference"),
    ("03_gan", {"train_subset": 65}, r"'batch_size' = 64 .*last batch of 1 image"),
    ("03_gan", {"batch_size": 1}, r"'batch_size' = 1 .*last batch of 1 image"),
    ("03_gan", {"train_subset": 1}, r"'train_subset' = 1 .*last batch of 1 image"),
    ("03_gan", {"batch_size": 59_999, "train_subset": 60_000}, r"'batch_size' = 59999 .*60000 training images"),
])
def test_values_that_would_fail_after_training_are_refused_before(nb, kwargs, pattern, tmp_path):
    with pytest.raises(ParameterError, match=pattern):
        resolve(nb, "smoke", output_dir=str(tmp_path), **kwargs)


@pytest.mark.parametrize("nb, kwargs", [
    ("01_vae_basic", dict(n_samples=129, train_subset=60_000, test_subset=10_000, seed=2**32 - 1, seeds=1,
                          other_seeds=1)),
    ("01_vae_basic", dict(seed=2**32 - 3, seeds=3)),
    ("01_vae_basic", dict(train_subset="1e3", test_subset="2e2")),  # None in the default profile: still numbers
    ("03_gan", dict(train_subset=66, batch_size=64)),
    ("03_gan", dict(train_subset=None, batch_size=7)),  # 60000 = 7 * 8571 + 3
    ("02_vae_derivation", dict(iwae_ks=[5], iwae_k=1, iwae_images=2, mc_samples=1000)),
])
def test_the_limits_themselves_are_allowed(nb, kwargs, tmp_path):
    cfg = resolve(nb, "default", output_dir=str(tmp_path), **kwargs)
    for k, v in kwargs.items():
        assert cfg[k] == (int(float(v)) if isinstance(v, str) else v)


@pytest.mark.parametrize("profile", config.PROFILE_NAMES)
@pytest.mark.parametrize("nb", config.NOTEBOOKS)
def test_every_profile_passes_its_own_validation(nb, profile, tmp_path):
    cfg = resolve(nb, profile, output_dir=str(tmp_path))
    assert cfg["n_samples"] > 128  # the FID's 128 feature dimensions


# --- 5. unknown parameters through make report; profile and output_dir through make report -----

def test_setup_reads_only_the_notebooks_parameters_from_its_globals(tmp_path, keep_global_state):
    ns = {name: None for name in parameter_names("03_gan")}
    ns.update(profile="smoke", epochs=1, output_dir=str(tmp_path), device="cpu", epoch=3,
              helper=lambda: None)  # any other global of the notebook is none of setup's business
    cfg, _ = notebook.setup("03_gan", ns)
    assert cfg["profile"] == "smoke" and cfg["epochs"] == 1 and "epoch" not in cfg


def test_report_refuses_a_misspelt_parameter_before_running_with_a_hint(tmp_path):
    """papermill alone only warns about a name the parameters cell lacks and the run ignores it: make report
    checks every -p name against the notebooks' parameters cells first."""
    r = _report("--nb", "03_gan", "-p", "epoch", "3", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2, r.stderr
    assert re.search(r"unknown parameter\(s\) \['epoch'\] for \['03_gan'\]; known: \[.*'epochs'.*did you mean "
                     r"'epoch' -> 'epochs'", r.stderr), r.stderr
    assert not (tmp_path / "report").exists() and _leftovers(tmp_path) == []
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) \['iwae_k'\] for \['03_gan'\]"):
        R.plan(["03_gan"], "smoke", {"iwae_k": 5}, tmp_path / "out")  # in lib's profile, not in 03's cell


def test_p_profile_is_the_profile_and_p_output_dir_is_refused_with_the_reason(tmp_path):
    params = R.plan(["03_gan"], "smoke", {"profile": "smoke"}, tmp_path / "out")
    assert params["03_gan"]["profile"] == "smoke"
    r = _report("--nb", "03_gan", "-p", "output_dir", "elsewhere", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2
    assert "parameter 'output_dir' = 'elsewhere' is invalid here: make report decides where" in r.stderr
    assert "use papermill directly" in r.stderr
    r = _report("--nb", "03_gan", "-p", "profile", "fast", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2 and "parameter 'profile' = 'fast' is invalid: allowed one of" in r.stderr
    assert not (tmp_path / "report").exists() and _leftovers(tmp_path) == []
    assert R.overrides_from(R.parse_params("-p profile smoke -p epochs 2"), None) == ("smoke", {"epochs": 2})
    assert R.overrides_from(R.parse_params("-p profile smoke"), "smoke") == ("smoke", {})
    assert R.overrides_from([], None) == ("default", {})
    with pytest.raises(ParameterError, match=r"'profile' = 'smoke' is invalid: it disagrees with .*'full'"):
        R.overrides_from(R.parse_params("-p profile smoke"), "full")


# --- 6. the Makefile hands P, NB and PROFILE to Python, never to the shell -------------------

@pytest.mark.parametrize("variables", [
    {"NB": "03_gan", "P": "-p epochs 0; touch {x}"},
    {"NB": "03_gan", "P": "-p epochs 0 && touch {x}"},
    {"NB": "03_gan", "P": "-p epochs $(shell touch {x})"},
    {"NB": "09_nope; touch {x} #", "P": "-p epochs 0"},
    {"PROFILE": "nope; touch {x} #", "NB": "03_gan"},
], ids=["P-semicolon", "P-and", "P-make-shell", "NB", "PROFILE"])
def test_make_report_runs_nothing_from_its_variables_and_fails(tmp_path, variables):
    x = tmp_path / "injected"
    r = subprocess.run(["make", "report", *(f"{k}={v.format(x=x)}" for k, v in variables.items())], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stdout + r.stderr
    assert not x.exists(), "a command inside a make variable was run"
    assert "error:" in r.stderr


def test_p_is_split_into_words_not_run():
    assert R.parse_params("-p betas [1,8] -p epochs 3") == [("betas", "[1,8]"), ("epochs", "3")]
    assert R.parse_params("-p name 'two words' --parameters seed 1") == [("name", "two words"), ("seed", "1")]
    assert R.parse_params("") == []
    assert R.overrides_from(R.parse_params("-p train_subset None"), None) == ("default", {"train_subset": None})
    for bad, pattern in [("-p epochs 0; touch x", r"'touch x' is not a '-p NAME VALUE' group"),
                         ("-p epochs", r"'-p epochs' is not a '-p NAME VALUE' group"),
                         ("epochs 2", r"'epochs 2' is not"),
                         ("-p name 'open", r"cannot be split into words")]:
        with pytest.raises(ParameterError, match=pattern):
            R.parse_params(bad)


# --- 7. divergence without a NaN; the in-process data memo ---------------------------------

def test_a_diverging_run_is_marked_and_warned_about(tmp_path, mnist_raw):
    spec = RunSpec(tag="diverge", model="GAN", epochs=2, lr=1000.0, latent_dim=8, train_subset=256, test_subset=64,
                   batch_size=64)
    with pytest.warns(UserWarning, match=rf"run {spec.run_id} diverged at epoch \d: .* per image \(\|value\| > 1e\+06\)"):
        run = fit(spec, cache=tmp_path, show_progress=False)
    flagged = [row for row in run.history if row.get("diverged")]
    assert flagged and all(row["diverged"] is True for row in flagged)
    assert all(max(abs(row[k]) for k in ("g_loss", "d_loss")) > train.DIVERGED for row in flagged)
    with pytest.warns(UserWarning, match=r"\(loaded from its checkpoint\) diverged at epoch\(s\)"):
        again = fit(spec, cache=tmp_path, show_progress=False)
    assert again.trained_epochs == 0


def test_a_healthy_run_is_not_marked(tmp_path, mnist_raw):
    spec = RunSpec(tag="healthy", epochs=1, train_subset=128, test_subset=64, batch_size=32, latent_dim=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        run = fit(spec, cache=tmp_path, show_progress=False)
    assert "diverged" not in run.history[0]


@pytest.mark.parametrize("edit", ["same-size-mtime-kept", "replaced-same-size-mtime"])
def test_the_data_memo_notices_an_edit_that_keeps_size_and_mtime(tmp_path, edit):
    p = tmp_path / "file.idx"
    p.write_bytes(b"\x00" * 64)
    st = p.stat()
    data._mark_verified(p)
    assert data._verified_ok(p)
    time.sleep(0.05)  # file times tick coarsely (a few ms)
    if edit == "same-size-mtime-kept":
        with open(p, "r+b") as f:
            f.write(b"\x01")
    else:
        other = tmp_path / "other.idx"
        other.write_bytes(b"\x02" * 64)
        os.replace(other, p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
    assert not data._verified_ok(p), "an edited file must be hashed again"
