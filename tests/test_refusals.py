"""Refusals that say what happened (reliability, third pass): the bench refuses while a build holds
report.lock and names the holder; the manifest says "unknown" when git cannot tell; a list parameter
given as text through papermill is refused with the -y spelling; a broken checkpoint never stops a notebook
(tests/test_training_loop.py); the README is a landing page that calls the original document the course report."""
import argparse
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness import config
from builder import report as R

ROOT = Path(__file__).resolve().parent.parent

_HOLD = """
import sys, time
from pathlib import Path
from builder import report as R
with R.report_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_the_bench_refuses_while_a_build_holds_the_lock_and_names_it(tmp_path, monkeypatch, capsys):
    report = tmp_path / "report"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(report)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        spec = importlib.util.spec_from_file_location("bench_main", ROOT / "bench" / "bench.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        monkeypatch.setattr(R, "REPORT", report)
        monkeypatch.setattr(bench, "main", lambda: pytest.fail("the bench ran while the lock was held"))
        monkeypatch.setattr(sys, "argv", ["bench.py"])
        t0 = time.monotonic()
        assert bench.locked_main() == 3
        err = capsys.readouterr().err
        assert f"is held by pid {holder.pid} " in err and "make bench: another build is writing" in err
        assert time.monotonic() - t0 < 10
    finally:
        holder.kill()


def test_without_git_the_manifest_says_unknown(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    assert R._git("rev-parse", "HEAD") == "unknown" and R.git_dirty() == "unknown"


def test_a_list_parameter_given_as_text_is_refused_with_the_y_spelling():
    with pytest.raises(config.ParameterError, match=r"'betas' = '\[1,2\]' is invalid: allowed a non-empty list "
                                                    r"\(papermill's -p passes text: use -y"):
        config.validate({"betas": "[1,2]"})


def test_the_readme_is_a_landing_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 100
    assert not re.search(r"\bthe seed\b|\bseed report\b|\bseed's\b", text, re.I), "call it the course report"
    for insider in ("this machine", "same VM", "a lent H200"):
        assert insider not in text
    for path in ("report/index.html", "docs/methods.md", "bench/README.md"):
        assert path in text and (ROOT / path).exists()


def test_the_course_report_is_never_called_the_seed():
    """"Seed" means a training seed everywhere in the project's prose and code, never the course report."""
    named = re.compile(r"\bthe seed report\b|\bthe seed's\b|\bseed report\b|\bthe seed then\b", re.I)
    files = [p for folder in ("lib", "harness", "builder", "tools", "bench", "docs", "notebooks", "tests")
             for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".ipynb")]
    files.append(ROOT / "README.md")
    offending = [str(p.relative_to(ROOT)) for p in files
                 if p.name != "test_refusals.py" and named.search(p.read_text(encoding="utf-8"))]
    assert not offending, f"call it the course report in {offending}"


@pytest.mark.parametrize("profile, p, params, folder", [
    (None, [], "", "report"), ("default", [], "", "report"), ("smoke", [], "", "report-smoke"),
    (None, [["profile", "smoke"]], "", "report-smoke"), (None, [], "-p profile full -p epochs 2", "report-full"),
])
def test_a_non_default_profile_never_builds_the_committed_report(profile, p, params, folder):
    args = argparse.Namespace(profile=profile, p=p, params=params)
    assert R.default_report_dir(args) == ROOT / folder


def test_the_training_estimate_never_stops_a_build(monkeypatch):
    def broken(threads):
        raise RuntimeError("no oneDNN here")
    monkeypatch.setattr(R, "cpu_seconds_per_epoch", broken)
    line = R.training_estimate("default", "cpu")
    assert line.startswith("estimate: 268 model-epochs to train; no measured rate")
    assert "no oneDNN here" in line


def test_the_training_estimate_times_this_cpu_and_says_when_the_build_takes_hours(monkeypatch):
    threads = torch.get_num_threads()
    rates = R.cpu_seconds_per_epoch(1, steps=1)  # the real thing: a few steps of each model on this CPU
    assert set(rates) == {"ConvVAE", "BetaVAE", "GAN"} and all(0 < r < 1e5 for r in rates.values())
    monkeypatch.setattr(R, "cpu_seconds_per_epoch", lambda threads: {"ConvVAE": 60.0, "BetaVAE": 6.0, "GAN": 12.0})
    quick = R.training_estimate("default", "cpu", jobs=2)  # (80 x 60 + 128 x 6 + 60 x 12) s over 2 kernels = 52 min
    assert "takes about 52 min on this CPU" in quick and "over an hour" not in quick
    monkeypatch.setattr(R, "cpu_seconds_per_epoch", lambda threads: {"ConvVAE": 180.0, "BetaVAE": 13.0, "GAN": 31.0})
    slow = R.training_estimate("default", "cpu", jobs=2)
    assert "takes about 150 min" in slow and "PROFILE=quick" in slow  # 01's 9,000 s: no lane ends sooner
    # one notebook: one kernel; 03 alone trains the basic tier's BCE models it compares with (3 seeds x 5 epochs)
    one = R.training_estimate("default", "cpu", {"03_gan": {"epochs": 2}}, jobs=2)
    assert "15 ConvVAE, 6 GAN, 0 BetaVAE" in one and "takes about 48 min" in one
    assert torch.get_num_threads() == threads, "timing the steps leaves the build's torch threads as they were"
