"""Smoke execution of every tier notebook (papermill, profile=smoke) and hygiene of the committed sources."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from harness.config import NOTEBOOKS, PROFILES

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"


def test_every_notebook_in_the_folder_is_covered():
    assert sorted(p.stem for p in NB_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


def _committed(name: str) -> str:
    """The notebook as committed (git's HEAD), so that saving it from JupyterLab with outputs does not fail
    this test; the work tree's copy outside a git checkout (or before the first commit of a new notebook)."""
    path = f"notebooks/{name}.ipynb"
    r = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else (ROOT / path).read_text()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean(name):
    nb = nbformat.reads(_committed(name), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "install" in code[0].metadata.get("tags", []), "the first code cell installs the project where it is missing"
    assert "parameters" in code[1].metadata.get("tags", []), "the second code cell must be tagged 'parameters'"
    for c in code:
        assert c.outputs == [] and c.execution_count is None, "committed notebooks carry no outputs"


def test_notebook_outputs_are_stripped_at_commit():
    """notebooks/*.ipynb go through the nbstripout filter (installed by make setup), report/ does not."""
    attrs = (ROOT / ".gitattributes").read_text()
    assert "notebooks/*.ipynb filter=nbstripout" in attrs and "report" not in attrs
    import nbstripout  # noqa: F401 - the filter's program is installed

    nb = nbformat.read(str(NB_DIR / "03_gan.ipynb"), as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello")]
    nb.cells[2].execution_count = 3
    r = subprocess.run([sys.executable, "-m", "nbstripout"], input=nbformat.writes(nb), capture_output=True,
                       text=True, check=True)
    stripped = nbformat.reads(r.stdout, as_version=4)
    assert stripped.cells[2].outputs == [] and stripped.cells[2].execution_count is None
    assert stripped.cells[2].metadata.get("tags") == ["parameters"], "cell tags survive the filter"
    # make setup's filter names the venv's python relative to the working tree (git runs it from the top), so a
    # checkout that is moved or copied keeps stripping with its own environment
    r = subprocess.run(["git", "config", "--get", "filter.nbstripout.clean"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode == 0:
        assert r.stdout.startswith("'.venv/bin/python' "), f"filter.nbstripout.clean = {r.stdout.strip()}"


@pytest.mark.parametrize("name", [n for n in NOTEBOOKS if n != "02_vae_derivation"])
def test_a_tier_notebook_stays_a_lesson_of_at_most_120_code_lines(name):
    """The tier notebooks teach: their code (non-blank lines of code cells) stays short enough to read; what grows
    goes into lib, named. 02, the derivation, keeps its checks inline."""
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    lines = sum(1 for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines() if line.strip())
    assert lines <= 120, f"{name} has {lines} non-blank code lines (at most 120)"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_are_documented_literals(name):
    """Every profile key is a parameter, each line is `name: type = literal  # comment` (papermill parses it)."""
    import papermill as pm

    params = pm.inspect_notebook(str(NB_DIR / f"{name}.ipynb"))
    for key in [*PROFILES[name]["default"], "profile", "seed", "device", "output_dir"]:
        if key != "recon":
            assert key in params, f"{name}: profile key {key!r} is not a documented parameter"
    for p in params.values():
        assert p["help"], f"{name}: parameter {p['name']} has no comment"
        assert p["inferred_type_name"] != "None", f"{name}: parameter {p['name']} has no type annotation"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_are_the_default_profiles_values_and_comments_agree(name):
    """The parameters cell shows the default profile's values as literals (None only where None means "all"),
    and a default a comment quotes ("default profile: 5") is that value: both went stale once when the
    profile changed and the notebook did not."""
    import ast
    import re

    import papermill as pm

    from harness.config import NONE_MEANS_ALL, resolve

    default = resolve(name, "default")
    for p in pm.inspect_notebook(str(NB_DIR / f"{name}.ipynb")).values():
        if p["name"] in ("profile", "device", "output_dir", "precision"):
            continue
        literal = ast.literal_eval(p["default"])
        if literal is None:
            assert p["name"] in NONE_MEANS_ALL, f"{name}: parameter {p['name']} is None, not the profile's value"
            continue
        assert literal == default[p["name"]], f"{name}: {p['name']} = {literal!r}, the default profile has {default[p['name']]!r}"
        m = re.search(r"default(?: profile)?:? (\d[\d.e+-]*(?: \d[\d.e+-]*)*)", p["help"])
        if m:
            value = default[p["name"]]
            expected = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
            assert [float(v) for v in m.group(1).split()] == expected, f"{name}: {p['name']}'s comment says {m.group(1)}"


def test_a_profile_takes_over_what_was_left_at_the_default(tmp_path):
    from harness.config import resolve

    literals = dict(epochs=5, seeds=3, other_seeds=2, matched_weights={"mse": 3.1, "l1": 1.75}, train_subset=None)
    smoke = resolve("01_vae_basic", "smoke", output_dir=str(tmp_path), **literals)
    assert (smoke["epochs"], smoke["seeds"], smoke["train_subset"]) == (1, 2, 512)
    changed = resolve("01_vae_basic", "smoke", output_dir=str(tmp_path), **{**literals, "epochs": 2})
    assert changed["epochs"] == 2 and changed["seeds"] == 2, "a changed value stays; the rest is the profile's"
    assert resolve("01_vae_basic", "default", output_dir=str(tmp_path), **literals)["epochs"] == 5


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_the_smoke_profile(name, tmp_path, mnist_raw):
    import papermill as pm

    from lib import claims

    out = tmp_path / "out"
    pm.execute_notebook(str(NB_DIR / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
                        parameters={"profile": "smoke", "output_dir": str(out)}, kernel_name="python3",
                        cwd=str(ROOT), progress_bar=False)
    figures = list((out / "figures").glob(f"{name}_*.png"))
    assert figures, "each notebook saves at least one figure"
    if name != "02_vae_derivation":  # every tier with a claim writes its sub-claims' labels for the findings table
        doc = json.loads((out / "verdicts" / f"{name}.json").read_text())
        assert doc["notebook"] == name and doc["profile"] == "smoke" and doc["subclaims"]
        assert all(s["label"] in claims.LABELS for s in doc["subclaims"])
    for m in (out / "runs").glob("*/metrics.json"):
        doc = json.loads(m.read_text())
        assert doc["notebook"] == name and doc["metrics"]
        assert (m.parent / "samples.npz").exists()
