"""make study's bookkeeping, without training: the budget parameters per rung, the ladder's span, and
ladder.json / index.html assembled from rung folders (a rung's verdicts as builder.report writes them); and, with
a real ``python -m builder.study`` on the smoke ladder, that SIGTERM stops a rung's kernels."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder import study

ROOT = Path(__file__).resolve().parent.parent


def test_every_ladder_spans_at_least_ten_times_over_four_rungs_and_the_course_ladder_reaches_its_budgets():
    for name in ("cpu", "course"):
        for family, epochs in study.LADDERS[name].items():
            assert len(epochs) == 4 and list(epochs) == sorted(set(epochs)), (name, family)
            assert epochs[-1] / epochs[0] >= 10, (name, family)
    assert study.LADDERS["course"]["ConvVAE"][-1] == 250 and study.LADDERS["course"]["GAN"][-1] == 200
    assert study.LADDERS["cpu"]["BetaVAE"][-1] == 15 and study.LADDERS["cpu"]["GAN"][-1] >= 3 * 20


def test_rung_parameters_give_each_notebook_its_family_budget():
    p = study.rung_params(study.LADDERS["cpu"], 3)
    assert p["01_vae_basic"] == {"epochs": 20, "ablation_epochs": 20} and p["05_noisy_data"] == {"epochs": 20}
    assert p["04_beta_vae"] == {"epochs": 15, "latent2_epochs": 15}
    assert p["03_gan"] == {"epochs": 60, "vae_epochs": 20}, "the GAN's VAE is the basic tier's at this rung"


def _rung(folder, labels):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"this_build_wall_seconds": 10.0, "environment": {"cpu": "X"},
                                                      "notebooks": {"03_gan": {"wall_seconds": 9.0}}}))
    subs = [{"claim": "c", "claim_text": "GAN clearer", "id": i, "text": "t", "metric": "fid", "notebook": "03_gan",
             "label": l, "deciding": f"{i} at {folder.name}", "anchor": f"verdict-{i}"} for i, l in labels.items()]
    (folder / "verdicts.json").write_text(json.dumps({"subclaims": subs}))


def test_ladder_json_holds_each_subclaims_label_per_rung_and_whether_it_is_stable(tmp_path, monkeypatch):
    monkeypatch.setitem(study.LADDERS, "two", {"ConvVAE": (1, 2), "BetaVAE": (1, 2), "GAN": (3, 6)})
    _rung(tmp_path / "rung-1", {"c1": "kept", "c2": "inconclusive"})
    _rung(tmp_path / "rung-2", {"c1": "kept", "c2": "refuted"})
    doc = study.ladder_doc(tmp_path, "two")
    assert doc["budgets"]["GAN"] == [3, 6] and [r["epochs"]["GAN"] for r in doc["rungs"]] == [3, 6]
    rows = {s["id"]: s for s in doc["subclaims"]}
    assert rows["c1"]["labels"] == ["kept", "kept"] and rows["c1"]["stable"]
    assert rows["c2"]["labels"] == ["inconclusive", "refuted"] and not rows["c2"]["stable"]
    assert rows["c2"]["deciding"] == ["c2 at rung-1", "c2 at rung-2"]
    page = study.write_page(tmp_path, doc, 20.0, "X").read_text()
    assert 'href="rung-2/03_gan.html#verdict-c2"' in page and "<b>changes</b>" in page and "stable" in page


def test_the_report_index_points_to_the_ladder_when_there_is_one(tmp_path):
    from builder import html

    report = tmp_path / "report"
    report.mkdir()
    html.write_index(report)
    assert "study/index.html" not in (report / "index.html").read_text()
    (report / "study").mkdir()
    subclaims = [{"id": "a1", "stable": True, "labels": ["kept", "kept"]},
                 {"id": "a2", "stable": False, "labels": ["kept", "inconclusive"]},
                 {"id": "a3", "stable": True, "labels": ["inconclusive", "inconclusive"]}]
    (report / "study" / "ladder.json").write_text(json.dumps({"budgets": {"ConvVAE": [2, 20], "GAN": [6, 60]},
                                                             "subclaims": subclaims}))
    (report / "verdicts.json").write_text(json.dumps({"subclaims": [
        {"id": i, "label": label, "claim": i[0], "claim_text": "", "text": "", "deciding": "", "notebook": "01_vae_basic",
         "anchor": f"verdict-{i}"} for i, label in (("a1", "kept"), ("a2", "kept"), ("a3", "inconclusive"),
                                                   ("a4", "kept"), ("f3", "holds by construction"))]}))
    html.write_index(report)
    index = (report / "index.html").read_text()
    assert 'href="study/index.html"' in index and "ConvVAE 20, GAN 60" in index
    assert "judges 3 sub-claims again" in index and "a4 need models it does not train" in index, "f3 is not tested"
    assert "1 change label along it, and 1 are inconclusive at every rung" in index


def test_numbers_reads_gain_interval_and_floor_back_from_a_deciding_text():
    text = ("L1 0.0180 ± 0.0003 (2 seeds) vs MSE 0.0445 ± 0.0000 (2 seeds); gain +0.0265 [+0.0141, +0.0389] "
            "(paired t, df 1.0, 98.8%); floor 0.0055")
    assert study.numbers(text) == (0.0265, 0.0141, 0.0389, 0.0055)
    assert study.numbers("GAN 30.0 (1 seed) vs VAE 180.0 (1 seed); gain +150.00 (no seed spread); floor 32.40") == (
        150.0, None, None, 32.4)
    assert study.numbers("rate 12 vs 30. holds by construction") is None


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parent.items() if pp == p}
        found |= kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.notebooks
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
def test_a_terminated_study_stops_its_kernels_and_says_how_to_resume(tmp_path, mnist_raw):
    proc = subprocess.Popen([sys.executable, "-m", "builder.study", "--ladder", "smoke", "--nb", "03_gan",
                             "--study-dir", str(tmp_path / "study")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    below: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not any("ipykernel" in _cmdline(p) for p in below):  # the rung's kernel has started
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no kernel started"
            time.sleep(0.2)
            below = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "interrupted (SIGTERM)" in out and "`make study` resumes" in out, out
    deadline = time.monotonic() + 30
    while (left := [p for p in below if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes {left} outlived the terminated study"
    assert not (tmp_path / "study" / "rung-1").exists(), "a stopped rung must not look built"


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def _built_repo(tmp_path, monkeypatch, files: dict[str, str]):
    """A git checkout of ``files`` committed as the commit a rung was built at; (repo, that rung's manifest)."""
    repo = tmp_path / "repo"
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "built here")
    monkeypatch.setattr(study.build, "ROOT", repo)
    monkeypatch.setattr(study.build, "sources_hash", lambda: "this tree")
    return repo, {"sources_sha256": "another tree", "git_commit": _git(repo, "rev-parse", "HEAD"), "git_dirty": False}


def test_a_rung_stays_built_while_nothing_that_can_change_its_numbers_has_changed(tmp_path, monkeypatch):
    repo, manifest = _built_repo(tmp_path, monkeypatch, {p: "x = 1\n" for p in (
        "lib/a.py", "notebooks/01.ipynb", "builder/report.py", "pyproject.toml", "constraints.txt")})
    assert study._same_results_code(manifest)
    (repo / "builder/report.py").write_text("x = 2\n")  # the build itself: rendering, scheduling
    assert study._same_results_code(manifest)
    assert not study._same_results_code({**manifest, "git_dirty": True}), "built from uncommitted code"
    assert not study._same_results_code({**manifest, "git_commit": "unknown"})
    (repo / "lib/b.py").write_text("y = 1\n")  # untracked, in lib
    assert not study._same_results_code(manifest)
    (repo / "lib/b.py").unlink()
    (repo / "notebooks/01.ipynb").write_text("x = 2\n")
    assert not study._same_results_code(manifest)
    _git(repo, "checkout", "-q", "--", "notebooks")
    assert study._same_results_code(manifest)
    for pinned in ("pyproject.toml", "constraints.txt"):
        (repo / pinned).write_text("x = 2\n")
        _git(repo, "add", pinned)  # staged, not committed
        assert not study._same_results_code(manifest), pinned
        _git(repo, "reset", "-q", "--", pinned)
        _git(repo, "checkout", "-q", "--", pinned)


def _notebook(*cells):
    """A notebook of (cell_type, source, tags) cells."""
    return json.dumps({"cells": [{"cell_type": t, "source": src, "metadata": {"tags": tags}} for t, src, tags in cells],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def test_a_rung_stays_built_through_prose_edits_but_not_through_a_code_edit(tmp_path, monkeypatch):
    module = '"""A module."""\n\n\ndef f(x):\n    """Twice x."""\n    return 2 * x  # doubled\n'
    cells = [("markdown", "# Lesson", []), ("code", "epochs = 5  # training epochs", ["parameters"]),
             ("code", "%matplotlib inline\nprint(epochs)", [])]
    repo, manifest = _built_repo(tmp_path, monkeypatch, {"lib/a.py": module, "notebooks/01.ipynb": _notebook(*cells)})

    def edit(path, text, same, commit=False):
        (repo / path).write_text(text)
        if commit:
            _git(repo, "commit", "-qam", "edit")
        assert study._same_results_code(manifest) is same, (path, text)
        _git(repo, "reset", "-q", "--hard", manifest["git_commit"])
        _git(repo, "clean", "-qfd")

    edit("lib/a.py", module.replace("Twice x.", "x, doubled: the lesson's example.").replace("# doubled", ""), True)
    edit("lib/a.py", module.replace("Twice x.", "Twice x, now explained."), True, commit=True)  # committed since
    edit("lib/a.py", module.replace("2 * x", "x + x"), False)
    edit("notebooks/01.ipynb", _notebook(("markdown", "# A better lesson\n\nwith more words", []), *cells[1:]), True)
    edit("notebooks/01.ipynb", _notebook(cells[0], ("code", "epochs = 5  # epochs of training", ["parameters"]),
                                         cells[2]), True)
    edit("notebooks/01.ipynb", _notebook(cells[0], ("code", "epochs = 6  # training epochs", ["parameters"]),
                                         cells[2]), False)
    edit("notebooks/01.ipynb", _notebook(cells[0], ("code", "epochs = 5  # training epochs", []), cells[2]), False)
    edit("notebooks/01.ipynb", _notebook(*cells[:2], ("code", "%matplotlib inline\nprint(epochs)  # x", [])), False)
    edit("notebooks/01.ipynb", _notebook(*cells[:2]), False)  # a code cell fewer
    edit("lib/b.py", '"""Only prose."""\n', False)  # a new module, untracked
    edit("notebooks/02_vae_derivation.ipynb", _notebook(("code", "k = 5", [])), True)  # no rung runs 02
    edit("notebooks/03_gan.ipynb", _notebook(("code", "k = 5", [])), False)
    (repo / "lib/a.py").unlink()
    assert not study._same_results_code(manifest), "a module removed"
    _git(repo, "checkout", "-q", "--", "lib")
    assert study._same_results_code(manifest)


def _runs(rung, device="cpu", **precision_of):
    for model, precision in precision_of.items():
        (rung / "runs" / model).mkdir(parents=True)
        (rung / "runs" / model / "metrics.json").write_text(json.dumps({"spec": {"model": model, "precision": precision}}))
    (rung / "manifest.json").write_text(json.dumps({"environment": {"cpu": "Intel(R) Xeon(R) Processor", "device": device}}))


def test_a_ladder_is_not_resumed_where_auto_precision_would_train_other_models(tmp_path, monkeypatch):
    import harness.config

    _runs(tmp_path / "rung-1", ConvVAE="bf16", GAN="bf16", BetaVAE="fp32")
    _runs(tmp_path / "rung-2", BetaVAE="fp32")  # a rung of β-VAEs only: always fp32, never a mismatch
    _runs(tmp_path / "rung-3", ConvVAE="fp32")
    _runs(tmp_path / "rung-4", device="cuda (NVIDIA H200)", ConvVAE="bf16")
    monkeypatch.setattr(harness.config, "resolve_precision", lambda precision, device: "fp32")
    why = study.mixed_precision(tmp_path, [1, 2], "cpu")
    assert why.startswith("rung 1 trained its ConvVAEs and GANs in bf16 on CPU (cpu, Intel(R) Xeon(R) Processor); "
                          "here they would train in fp32 on CPU") and "on a CPU with AMX or AVX-512 BF16" in why
    assert "move report/study/ aside" in why
    assert study.mixed_precision(tmp_path, [2, 3], "cpu") is None
    monkeypatch.setattr(harness.config, "resolve_precision", lambda precision, device: "bf16")
    assert study.mixed_precision(tmp_path, [1, 2], "cpu") is None
    assert "on a CPU without bf16 instructions" in study.mixed_precision(tmp_path, [3], "cpu")
    assert "in bf16 on CUDA" in study.mixed_precision(tmp_path, [4], "cpu") and "on a GPU" in \
        study.mixed_precision(tmp_path, [4], "cpu"), "a GPU's bf16 is not a CPU's"


def test_a_ladder_that_would_mix_models_stops_before_any_rung_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "_done", lambda report, params: report.name == "rung-1")
    monkeypatch.setattr(study, "mixed_precision", lambda d, kept, device: f"kept {kept}")
    monkeypatch.setattr(study, "build_rung", lambda *a, **k: pytest.fail("a rung was built"))
    assert study.main(["--ladder", "smoke", "--study-dir", str(tmp_path)]) == 2
    assert "error: kept [1]" in capsys.readouterr().err


def test_the_ladder_page_names_the_machine_of_each_rung():
    assert study.machines_text({"X (2 cores, cpu)": [1, 2, 3, 4]}) == "X (2 cores, cpu)"
    assert study.machines_text({"X (2 cores, cpu)": [1, 2, 3], "Y (2 cores, cpu)": [4]}) == \
        "rungs 1, 2, 3: X (2 cores, cpu); rung 4: Y (2 cores, cpu)"


def test_a_ladder_still_being_built_is_assembled_from_the_rungs_so_far(tmp_path, monkeypatch):
    from builder import html

    monkeypatch.setitem(study.LADDERS, "three", {"ConvVAE": (1, 2, 4), "BetaVAE": (1, 2, 4), "GAN": (3, 6, 12)})
    _rung(tmp_path / "study" / "rung-1", {"c1": "kept", "c2": "inconclusive"})
    _rung(tmp_path / "study" / "rung-2", {"c1": "kept", "c2": "refuted"})
    doc = study.ladder_doc(tmp_path / "study", "three")
    assert not doc["complete"] and [r["folder"] for r in doc["rungs"]] == ["rung-1", "rung-2", None]
    rows = {s["id"]: s for s in doc["subclaims"]}
    assert rows["c1"]["labels"] == ["kept", "kept", None] and rows["c1"]["stable"], "the same at every rung built"
    assert not rows["c2"]["stable"]
    page = study.write_page(tmp_path / "study", doc, 20.0, "X").read_text()
    assert "not built yet" in page and "same so far" in page and "The ladder is not complete" in page
    (tmp_path / "study" / "ladder.json").write_text(json.dumps(doc))
    link = html._study_link(tmp_path)
    assert "at 3 budgets, of which 2 are built so far, up to ConvVAE 2, BetaVAE 2, GAN 6 epochs" in link
    assert "judges 2 sub-claims again" in link and "1 change label along it" in link
    # make report reassembles the ladder afterwards without naming it: the ladder already there is kept
    assert study.main(["--assemble", "--study-dir", str(tmp_path / "study")]) == 0
    again = json.loads((tmp_path / "study" / "ladder.json").read_text())
    assert again["ladder"] == "three" and again["budgets"]["GAN"] == [3, 6, 12] and not again["complete"]
    assert study.main(["--ladder", "smoke", "--assemble", "--study-dir", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none").exists(), "nothing to assemble: nothing written"


def test_a_ladder_built_from_older_code_says_so_beside_todays_default_labels(tmp_path, monkeypatch):
    from builder import html

    module = '"""A module."""\n\n\ndef f(x):\n    return 2 * x\n'
    repo, manifest = _built_repo(tmp_path, monkeypatch, {"lib/a.py": module, "lib/b.py": module})
    assert study.changed_code(manifest) == []
    (repo / "lib/a.py").write_text(module.replace('"""A module."""', '"""A module, explained."""'))
    assert study.changed_code(manifest) == [], "prose only"
    (repo / "lib/b.py").write_text(module.replace("2 * x", "x + x"))
    assert study.changed_code(manifest) == ["lib/b.py"]
    assert study.changed_code({**manifest, "git_dirty": True}) is None
    folder = tmp_path / "study"
    _rung(folder / "rung-1", {"c1": "kept"})
    _rung(folder / "rung-2", {"c1": "kept"})
    for rung in ("rung-1", "rung-2"):
        m = json.loads((folder / rung / "manifest.json").read_text())
        (folder / rung / "manifest.json").write_text(json.dumps(m | manifest))
    monkeypatch.setitem(study.LADDERS, "two", {"ConvVAE": (1, 2), "BetaVAE": (1, 2), "GAN": (3, 6)})
    doc = study.ladder_doc(folder, "two")
    assert [r["code_changed_since"] for r in doc["rungs"]] == [["lib/b.py"], ["lib/b.py"]]
    assert [r["built_at"] for r in doc["rungs"]] == [manifest["git_commit"]] * 2
    text = html.stale_text(doc)
    assert text.startswith(f"rungs 1, 2 were built at commit {manifest['git_commit'][:7]}") and "(lib/b.py)" in text
    assert "Built from older code" in study.write_page(folder, doc, 1.0, "X").read_text()
    (repo / "lib/b.py").write_text(module)  # the code back as it was: nothing to say
    doc = study.ladder_doc(folder, "two")
    assert html.stale_text(doc) == "" and "Built from older code" not in study.write_page(folder, doc, 1.0, "X").read_text()
    (folder / "ladder.json").write_text(json.dumps(doc | {"rungs": [doc["rungs"][0] | {"code_changed_since": None}]}))
    assert "cannot be told" in html._study_link(tmp_path)


def test_the_report_index_says_when_its_pages_were_built_from_older_code(tmp_path, monkeypatch):
    """make pages and study --assemble rewrite the index: it names the result files whose code changed since the
    build (02 counts for the report, though not for the ladder), and says nothing once a build is today's."""
    from builder import html, prose

    module = '"""A module."""\n\n\ndef f(x):\n    return 2 * x\n'
    repo, manifest = _built_repo(tmp_path, monkeypatch, {"lib/a.py": module, "notebooks/02_vae_derivation.ipynb": "{}",
                                                         "builder/html.py": module})
    (repo / "builder/html.py").write_text(module.replace("2 * x", "x + x"))  # the build's own code: no number moves
    (repo / "lib/a.py").write_text(module.replace('"""A module."""', '"""Explained."""'))  # prose: nothing either
    assert prose.changed_code(manifest) == []
    (repo / "notebooks/02_vae_derivation.ipynb").write_text("[]")
    assert prose.changed_code(manifest) == ["notebooks/02_vae_derivation.ipynb"]
    assert study.changed_code(manifest) == [], "no rung runs 02"
    (repo / "lib/a.py").write_text(module.replace("2 * x", "x + x"))
    changed = prose.changed_code(manifest)
    assert changed == ["lib/a.py", "notebooks/02_vae_derivation.ipynb"]
    report = tmp_path / "report"
    report.mkdir()
    (report / "manifest.json").write_text(json.dumps(manifest))
    html.write_index(report, changed)
    page = (report / "index.html").read_text()
    assert "Built from older code." in page and f"built at commit {manifest['git_commit'][:7]}" in page
    assert "(lib/a.py, notebooks/02_vae_derivation.ipynb)" in page
    html.write_index(report, None)
    assert "cannot be told" in (report / "index.html").read_text()
    html.write_index(report)  # a fresh build
    assert "older code" not in (report / "index.html").read_text()
    (report / "01_vae_basic.ipynb").write_text("{}")
    (report / "manifest.json").write_text(json.dumps(manifest | {"notebooks": {"01_vae_basic": {}}}))
    with pytest.raises(prose.ProseError, match=r"code of lib/a.py has changed since .*make report, not make pages"):
        prose.refresh(report, repo / "notebooks")


def test_a_build_is_dirty_when_the_code_its_kernels_load_changes_while_it_runs_but_not_builder(tmp_path, monkeypatch):
    """A rung built while builder/ was committed (it renders and schedules, imported once) stays clean; an edit to
    lib/ or a notebook during the build marks it dirty (a rung whose manifest says clean is trusted by make study)."""
    repo = tmp_path / "repo"
    for path in ("lib/a.py", "harness/h.py", "builder/report.py", "notebooks/01.ipynb", "pyproject.toml", "constraints.txt"):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "built here")
    monkeypatch.setattr(study.build, "ROOT", repo)
    monkeypatch.setattr(study.build, "NB_DIR", repo / "notebooks")
    start = study.build.code_state()
    assert start[0] is False
    (repo / "builder/report.py").write_text("x = 2\n")
    _git(repo, "commit", "-qam", "a builder change, mid-build")
    assert study.build.built_dirty(start) is False
    (repo / "lib/a.py").write_text("x = 2\n")
    assert study.build.built_dirty(start) is True
    _git(repo, "commit", "-qam", "committed: git sees no change, the kernels loaded the old code")
    assert study.build.built_dirty(start) is True
    (repo / "lib/a.py").write_text("x = 1\n")
    _git(repo, "commit", "-qam", "back as it was")
    assert study.build.built_dirty(start) is False
    (repo / "notebooks/01.ipynb").write_text("x = 3\n")
    assert study.build.built_dirty(start) is True
