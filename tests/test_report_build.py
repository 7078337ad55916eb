"""make report's guarantees, with real `python -m builder.report` processes on the smoke profile of 03_gan
(always with --report-dir under tmp_path: the real report/ is never touched): a bad value or an unknown
notebook stops before anything runs, one build at a time, report/ swapped whole and untouched on any failure
(Ctrl-C included), the Makefile hands P, NB and PROFILE to Python and never to the shell."""
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from builder import report as R
from harness.config import ParameterError

ROOT = Path(__file__).resolve().parent.parent


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
        {"notebooks": {"01_vae_basic": {"profile": "default", "wall_seconds": 5.0}},
         "prose": {"git_commit": "0" * 40, "notebooks": ["01_vae_basic", "03_gan"]}}))  # make pages' record
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


def test_report_rejects_a_bad_p_value_before_running(tmp_path):
    r = _report("--nb", "03_gan", "-p", "epochs", "0", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2
    assert "parameter 'epochs' = 0 is invalid" in r.stderr
    assert not (tmp_path / "report").exists() and not list(tmp_path.glob("report.tmp-*"))


def test_report_rejects_unknown_notebook_and_parameter(tmp_path):
    r = _report("--nb", "09_nope", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2 and "09_nope" in r.stderr and "03_gan" in r.stderr
    r = _report("--nb", "03_gan", "-p", "colour", "red", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2 and "colour" in r.stderr


def test_make_report_exits_nonzero_on_bad_parameter():
    r = subprocess.run(["make", "report", "NB=03_gan", "P=-p lr -1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert "parameter 'lr' = -1 is invalid" in r.stderr


def test_failed_notebook_leaves_the_previous_report_untouched(tmp_path, mnist_raw):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    nb = nbformat.read(str(ROOT / "notebooks" / "03_gan.ipynb"), as_version=4)
    nb.cells.insert(3, nbformat.v4.new_code_cell("raise RuntimeError('injected failure')"))
    nbformat.write(nb, str(nb_dir / "03_gan.ipynb"))
    report = tmp_path / "report"
    (report / "figures").mkdir(parents=True)
    (report / "03_gan.html").write_text("previous good page")
    (report / "figures" / "03_gan_progression.png").write_bytes(b"previous figure")
    r = _report("--nb", "03_gan", "--profile", "smoke", "--report-dir", str(report), "--notebook-dir", str(nb_dir))
    assert r.returncode == 1
    assert "injected failure" in r.stderr + r.stdout
    assert (report / "03_gan.html").read_text() == "previous good page"
    assert (report / "figures" / "03_gan_progression.png").read_bytes() == b"previous figure"
    failed = list(tmp_path.glob("report.failed-*"))
    assert len(failed) == 1 and "03_gan failed" in (failed[0] / "FAILED.txt").read_text()
    assert not list(tmp_path.glob("report.tmp-*"))


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
    assert manifest["prose"]["notebooks"] == ["01_vae_basic"]  # 03_gan's page now has its own commit's Markdown
    models = manifest["this_build_models"]  # how many of its models the build trained, not loaded from the cache
    assert models["recorded"] == len({json.loads(p.read_text())["run_id"] for p in new_runs})
    assert 0 <= models["trained"] <= models["recorded"]
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
    assert not list(ROOT.glob(f"report-*/**/{tmp_path.name}")), "a refused build left a folder named after its input"


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


def test_models_trained_counts_the_checkpoints_written_since_the_build_started(tmp_path):
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    for name, run_id in (("a", "vae-a"), ("05-a", "vae-a"), ("b", "vae-b"), ("c", "vae-c"), ("broken", None)):
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.json").write_text(json.dumps({"run_id": run_id}) if run_id else "{not json")
    for run_id in ("vae-a", "vae-b"):  # vae-c recorded, its checkpoint gone: not counted as trained
        (cache / run_id).mkdir(parents=True)
        (cache / run_id / "checkpoint.pt").write_bytes(b"x")
    start = time.time()
    os.utime(cache / "vae-b" / "checkpoint.pt", (start - 3600, start - 3600))  # trained an hour before the build
    os.utime(cache / "vae-a" / "checkpoint.pt", (start + 5, start + 5))
    assert R.models_trained(runs, start, cache) == {"recorded": 3, "trained": 1}
    assert R.models_trained(runs, start - 7200, cache) == {"recorded": 3, "trained": 2}
    assert R.models_trained(tmp_path / "none", start, cache) == {"recorded": 0, "trained": 0}
