"""The environment files agree, and CI runs the README's test command."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_ranges() -> dict[str, str]:
    """Each direct dependency of pyproject.toml (the dev extra included) -> its version range."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + [r for extra in meta["optional-dependencies"].values() for r in extra]
    return dict(re.fullmatch(r"([A-Za-z0-9_.-]+)(.*)", r).groups() for r in reqs)


def _lock() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    return {k.lower().replace("_", "-"): v for k, v in pins.items()}


def test_every_direct_dependency_has_a_lower_bound_and_the_lock_pins_it_inside_its_range():
    from packaging.specifiers import SpecifierSet

    lock = _lock()
    for name, spec in _pyproject_ranges().items():
        assert spec.startswith(">="), f"{name}{spec}: a range with a lower bound (Colab keeps its own versions)"
        assert name.lower() in lock, f"{name} is not in constraints.txt"
        assert lock[name.lower()] in SpecifierSet(spec), f"constraints.txt pins {name}=={lock[name.lower()]}, outside {spec}"


def test_environment_yml_pins_the_locked_versions_of_the_direct_dependencies():
    yml = dict(re.findall(r"^\s*-\s*([A-Za-z0-9_.-]+)==([\w.]+)\s*$", (ROOT / "environment.yml").read_text(), re.M))
    lock = _lock()
    assert yml == {name: lock[name.lower()] for name in _pyproject_ranges()}


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
