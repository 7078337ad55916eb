"""The committed report/ reads cleanly: no progress bars or warnings in the executed notebooks, no
machine paths anywhere, and pages that load nothing from a CDN."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "report"
NOTEBOOKS = sorted(REPORT.glob("0*.ipynb"))
# an absolute path of a build machine: the usual roots, a virtualenv, a temporary folder
MACHINE_PATH = re.compile(r"(?<![\w.:/])/(?:tmp|work|home|root|Users|private|var/folders|opt)/[\w.-]+|\.venv/lib/|[A-Z]:\\\\")
PROGRESS = re.compile(r"\d+%\|.*\||it/s\]|s/it\]|TqdmWarning|IProgress")

pytestmark = pytest.mark.skipif(not NOTEBOOKS, reason="no executed notebooks in report/ (run make report)")


def _streams(path: Path):
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                yield i, out.get("name"), "".join(out.get("text", ""))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_stderr_and_no_progress_bars_in_executed_notebooks(nb):
    bad = [(i, name, text[:120]) for i, name, text in _streams(nb) if name == "stderr" or PROGRESS.search(text)]
    assert bad == [], f"{nb.name}: stream outputs a reader would see as noise: {bad[:3]}"


def test_no_machine_paths_anywhere_in_report():
    hits = []
    for p in sorted(REPORT.rglob("*")):
        if p.suffix not in (".ipynb", ".html", ".json") or not p.is_file():
            continue
        text = p.read_text(errors="replace")
        # base64 image data cannot hold a path; leave it out so that it cannot produce false hits
        text = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+|\"image/png\": \"[A-Za-z0-9+/=\\n]+\"", "", text)
        hits += [f"{p.relative_to(ROOT)}: {m.group(0)}" for m in MACHINE_PATH.finditer(text)]
    assert hits == [], f"absolute machine paths in report/: {hits[:5]}"


def test_pages_load_no_script_or_style_from_a_cdn():
    for page in sorted(REPORT.glob("*.html")):
        html = page.read_text()
        remote = re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="((?:https?:)?//[^"]+)"', html)
        assert remote == [], f"{page.name} loads {remote[:3]}"
        assert "@jupyter-widgets/html-manager" not in html and "unpkg.com" not in html, \
            f"{page.name} embeds the widget manager from a CDN"


def test_the_check_catches_what_it_is_for():
    assert MACHINE_PATH.search('"input_path": "/tmp/tmpab12/01_vae_basic.ipynb"')
    assert MACHINE_PATH.search("/work/main/.venv/lib/python3.11/site-packages/tqdm/auto.py")
    assert not MACHINE_PATH.search('see <a href="runs/vae-bce/metrics.json">') and not MACHINE_PATH.search("1/2")
    assert PROGRESS.search("epoch 1/10:  45%|████▌     | 422/938 [00:09<00:11, 45.1it/s]")


def test_check_report_kernels_get_the_build_kernels_thread_count(tmp_path, monkeypatch):
    """make check-report reruns the notebooks with the build's kernel threads (a number computed afresh rounds by
    the thread count); an OMP_NUM_THREADS the user set wins, and without a manifest nothing is changed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_report", ROOT / "tools" / "check_report.py")
    check_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_report)
    monkeypatch.setattr(check_report, "REPORT", tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert "OMP_NUM_THREADS" not in check_report.kernel_env()
    (tmp_path / "manifest.json").write_text(json.dumps({"this_build_kernel_threads": 1}))
    assert check_report.kernel_env()["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert check_report.kernel_env()["OMP_NUM_THREADS"] == "3"


def test_check_report_refuses_before_training_when_the_reports_models_are_not_in_the_cache(tmp_path, monkeypatch, capsys):
    """Run with another cache than the build's, make check-report would silently train every model again: it says so
    and stops (exit 2) unless CHECK_REPORT_TRAIN is set; with the checkpoints present it counts nothing missing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_report", ROOT / "tools" / "check_report.py")
    check_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_report)
    from lib import store
    report, cache = tmp_path / "report", tmp_path / "cache"
    (report / "runs" / "vae-bce-0123456789").mkdir(parents=True)
    (report / "runs" / "vae-bce-0123456789" / "metrics.json").write_text(json.dumps({"run_id": "vae-bce-0123456789"}))
    (report / "01_vae_basic.ipynb").write_text("{}")
    monkeypatch.setattr(check_report, "REPORT", report)
    monkeypatch.setattr(store, "CACHE", cache)
    monkeypatch.delenv("CHECK_REPORT_TRAIN", raising=False)
    assert check_report.missing_models() == (1, ["vae-bce-0123456789"])
    assert check_report.main([]) == 2
    err = capsys.readouterr().err
    assert "1 of the 1 models" in err and "GENMNIST_CACHE" in err and str(cache) in err
    store.checkpoint_path("vae-bce-0123456789", cache).parent.mkdir(parents=True)
    store.checkpoint_path("vae-bce-0123456789", cache).write_bytes(b"")
    assert check_report.missing_models() == (1, [])
