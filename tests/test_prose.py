"""make pages: a prose-only edit of a notebook refreshes its report page without executing it; a code edit is refused."""
from __future__ import annotations

import copy
import json
import shutil

import pytest

from builder import prose
from builder import report as build

NB = "04_beta_vae"


def _executed():
    return json.loads((build.REPORT / f"{NB}.ipynb").read_text())


def _source():
    """The notebook as it stood when the committed page was built (its executed copy less outputs and papermill's
    cell): the test does not depend on whether notebooks/ has moved on since that build."""
    nb = _executed()
    nb["cells"] = [c for c in nb["cells"] if prose.INJECTED not in c.get("metadata", {}).get("tags", [])]
    for c in nb["cells"]:
        c["metadata"].pop("papermill", None)
        c["metadata"].pop("execution", None)
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    return nb


def _first(nb, kind, tag=None):
    return next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == kind
                and (tag is None or tag in c.get("metadata", {}).get("tags", [])))


def test_a_markdown_edit_is_merged_around_the_executed_outputs():
    source, executed = _source(), _executed()
    md = _first(source, "markdown")
    source["cells"][md]["source"] = "# A new title\n\nwith a new sentence."
    code = _first(source, "code", "parameters") + 1
    source["cells"][code]["source"] = "# a new comment\n" + "".join(source["cells"][code]["source"])
    merged = prose.merge(source, executed, NB)
    assert merged is not None
    assert merged["cells"][md]["source"] == "# A new title\n\nwith a new sentence."
    assert merged["cells"][md]["metadata"] == executed["cells"][md]["metadata"], "papermill's metadata kept"
    ran = [c for c in executed["cells"] if c["cell_type"] == "code"]
    now = [c for c in merged["cells"] if c["cell_type"] == "code"]
    assert [c["outputs"] for c in now] == [c["outputs"] for c in ran], "every output kept, the injected cell too"
    p = _first(merged, "code", "parameters")
    assert prose.INJECTED in merged["cells"][p + 1]["metadata"]["tags"], "papermill's cell follows 'parameters'"
    assert "# a new comment" in "".join(now[[i for i, c in enumerate(now) if prose.INJECTED not in
                                             c["metadata"].get("tags", [])][2]]["source"])
    assert prose.merge(merged_source := copy.deepcopy(source), merged, NB) is None, "a second refresh changes nothing"
    assert merged_source == source


@pytest.mark.parametrize("change", ["code", "tag", "added", "removed"])
def test_a_code_edit_is_refused_naming_the_cell(change):
    source, executed = _source(), _executed()
    i = _first(source, "code", "parameters")
    cell = source["cells"][i + 1]
    if change == "code":
        cell["source"] = "".join(cell["source"]) + "\nx = 1"
    elif change == "tag":
        cell["metadata"]["tags"] = ["lab-only"]
    elif change == "added":
        source["cells"].append({"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [],
                                "execution_count": None, "id": "new"})
    else:
        del source["cells"][i + 1]
    with pytest.raises(prose.ProseError, match=f"make report NB={NB}"):
        prose.merge(source, executed, NB)


def test_refresh_renders_the_new_prose_and_a_refusal_leaves_the_report_as_it_was(tmp_path, capsys):
    report, nb_dir = tmp_path / "report", tmp_path / "notebooks"
    report.mkdir()
    nb_dir.mkdir()
    for name in ("manifest.json", f"{NB}.ipynb", f"{NB}.html"):
        shutil.copy2(build.REPORT / name, report / name)
    manifest = json.loads((report / "manifest.json").read_text())
    manifest["notebooks"] = {NB: manifest["notebooks"][NB]}
    manifest.pop("prose", None)
    manifest["sources_sha256"] = build.sources_hash()  # as if built from today's lib (else make pages refuses)
    (report / "manifest.json").write_text(json.dumps(manifest))
    (report / "verdicts").mkdir()
    shutil.copy2(build.REPORT / "verdicts" / f"{NB}.json", report / "verdicts" / f"{NB}.json")
    source = _source()
    source["cells"][_first(source, "markdown")]["source"] = "# 04 · A refreshed heading\n\nSentence only in the new prose."
    (nb_dir / f"{NB}.ipynb").write_text(json.dumps(source))
    assert prose.refresh(report, nb_dir) == [NB]
    page = (report / f"{NB}.html").read_text()
    assert "Sentence only in the new prose." in page and "What this tier finds" in page
    doc = json.loads((report / "manifest.json").read_text())
    assert doc["prose"]["notebooks"] == [NB] and doc["notebooks"] == manifest["notebooks"]
    assert prose.refresh(report, nb_dir) == [], "nothing left to refresh"

    before = {p.name: p.read_bytes() for p in report.iterdir() if p.is_file()}
    source["cells"][_first(source, "code", "parameters")]["source"] = "epochs = 1"
    (nb_dir / f"{NB}.ipynb").write_text(json.dumps(source))
    with pytest.raises(prose.ProseError, match="code cell 2"):
        prose.refresh(report, nb_dir)
    assert {p.name: p.read_bytes() for p in report.iterdir() if p.is_file()} == before
    assert not list(tmp_path.glob("*tmp-prose*")), "no temporary folder left"
    assert prose.main(["--report", str(report), "--notebooks", str(nb_dir)]) == 2
    assert "make report NB=04_beta_vae" in capsys.readouterr().err
