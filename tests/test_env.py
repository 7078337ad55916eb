"""The environment files agree, and CI runs the README's test command."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_pins():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + [r for extra in meta["optional-dependencies"].values() for r in extra]
    return dict(r.split("==") for r in reqs)


def test_every_dependency_is_pinned():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for r in meta["dependencies"] + meta["optional-dependencies"]["dev"]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][\w.]*", r), r


def test_environment_yml_has_the_same_pins_as_pyproject():
    yml = dict(re.findall(r"^\s*-\s*([A-Za-z0-9_.-]+)==([\w.]+)\s*$", (ROOT / "environment.yml").read_text(), re.M))
    assert yml == _pyproject_pins()


def test_constraints_lock_agrees_with_pyproject():
    lock = dict(
        line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    lock = {k.lower().replace("_", "-"): v for k, v in lock.items()}
    for name, version in _pyproject_pins().items():
        assert lock.get(name.lower()) == version, name


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make report" in readme
    ci = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert "make test" in ci


def test_the_notebooks_kernel_runs_this_environment():
    """Notebooks name the kernel `python3`; started from this venv's jupyter (make lab, papermill) it
    must run this venv's Python (jupyter_client swaps a bare 'python' for the running interpreter)."""
    import json
    import subprocess
    import sys

    jupyter = Path(sys.executable).parent / "jupyter"
    specs = json.loads(subprocess.run([str(jupyter), "kernelspec", "list", "--json"], capture_output=True,
                                      text=True, check=True).stdout)["kernelspecs"]
    argv0 = specs["python3"]["spec"]["argv"][0]
    assert argv0 in {"python", "python3"} or Path(argv0).resolve() == Path(sys.executable).resolve()
