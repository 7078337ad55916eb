"""lib's modules import one another in one direction: no cycle, and no lib import hidden in a function
body (a function-level import is how a cycle gets papered over). Lazy imports of heavy third-party
modules (nbconvert, skimage, tqdm, ...) inside functions are fine: they are not lib modules."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "lib"
ROOT = LIB.parent

# (importer, imported) pairs allowed inside a function body, each with its reason. Keep this empty
# unless there is one: a lib module can import another at the top once the graph has no cycle.
FUNCTION_LEVEL_ALLOWED: dict[tuple[str, str], str] = {}


def lib_imports(folder: Path) -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, inside a function) for every import of one module of the package in
    ``folder`` by another: relative (``from . import x``, ``from .x import y``) or absolute (``lib.x``)."""
    package = folder.name
    modules = {p.stem for p in folder.glob("*.py")}
    found = []
    for path in sorted(folder.glob("*.py")):
        importer = path.stem
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def visit(node, in_function):
            for child in ast.iter_child_nodes(node):
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                targets = []
                if isinstance(child, ast.ImportFrom):
                    if child.level == 1 and child.module is None:  # from . import a, b
                        targets = [a.name for a in child.names]
                    elif child.level == 1:  # from .a.b import c
                        targets = [child.module.split(".")[0]]
                    elif child.level == 0 and child.module == package:  # from lib import a
                        targets = [a.name for a in child.names]
                    elif child.level == 0 and (child.module or "").startswith(package + "."):  # from lib.a import b
                        targets = [child.module.split(".")[1]]
                elif isinstance(child, ast.Import):  # import lib.a
                    targets = [a.name.split(".")[1] for a in child.names if a.name.startswith(package + ".")]
                for t in targets:
                    if t in modules and t != "__init__":
                        found.append((importer, t, child.lineno, in_function))
                visit(child, inner)

        visit(tree, False)
    return found


def find_cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    """One import cycle [a, b, ..., a] of the directed graph, or None."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def dfs(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return None


def test_lib_imports_form_no_cycle():
    imports = lib_imports(LIB)
    assert imports, "the scan found no imports at all: it is broken"
    cycle = find_cycle({(a, b) for a, b, _, _ in imports})
    assert cycle is None, "import cycle in lib: " + " -> ".join(cycle)


def test_no_lib_module_imports_another_inside_a_function():
    hidden = [f"lib/{a}.py:{line} imports lib.{b} inside a function"
              for a, b, line, in_function in lib_imports(LIB)
              if in_function and (a, b) not in FUNCTION_LEVEL_ALLOWED]
    assert not hidden, "\n".join(hidden)


def test_the_training_code_does_not_import_the_notebook_or_report_layers():
    """Layers point downwards: what a run id hashes never depends on notebook helpers, plots or the report."""
    upper = {"claims", "plots", "evaluate"}
    bad = [(a, b) for a, b, _, _ in lib_imports(LIB) if a in {"data", "models", "losses", "noise", "bounds", "train",
                                                            "store", "progress"} and b in upper]
    assert not bad, bad


# --- the scanner itself: it must see what the tests above rely on ---------------------------------

def _package(tmp_path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "lib"
    pkg.mkdir()
    for name, src in files.items():
        (pkg / f"{name}.py").write_text(src)
    return pkg


def test_scanner_finds_a_cycle_closed_by_a_function_level_import(tmp_path):
    pkg = _package(tmp_path, {
        "__init__": "",
        "a": "from . import b\n",
        "b": "from .c import thing\n",
        "c": "import os\n\ndef f():\n    from lib.a import x\n    import numpy\n    return x\n",
    })
    imports = lib_imports(pkg)
    assert sorted(imports) == [("a", "b", 1, False), ("b", "c", 1, False), ("c", "a", 4, True)]
    assert find_cycle({(a, b) for a, b, _, _ in imports}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("src, expected", [
    ("import lib.a\n", [("b", "a", 1, False)]),
    ("from lib import a, os\n", [("b", "a", 1, False)]),
    ("class K:\n    def m(self):\n        from .a import y\n", [("b", "a", 3, True)]),
    ("def f():\n    import tqdm\n    from skimage import metrics\n", []),  # third-party: not counted
])
def test_scanner_sees_every_import_form(tmp_path, src, expected):
    assert lib_imports(_package(tmp_path, {"a": "", "b": src})) == expected
    assert find_cycle({("a", "b")}) is None


def test_lib_imports_where_fcntl_does_not_exist():
    """Windows has no fcntl: every lib module must import without it (locks come from filelock)."""
    code = ("import sys; sys.modules['fcntl'] = None\n"  # import fcntl now raises ImportError, as on Windows
            "import importlib, pkgutil, lib, harness\n"
            "for p in (lib, harness):\n"
            "    for m in pkgutil.iter_modules(p.__path__):\n"
            "        importlib.import_module(f'{p.__name__}.{m.name}')\n"
            "from lib import store\n"
            "import tempfile, pathlib\n"
            "with store.exclusive(pathlib.Path(tempfile.mkdtemp()) / 'x'):\n"
            "    pass\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_lib_holds_no_build_machinery():
    """What a student reads in lib is models, losses, training and measurement: the report build (papermill,
    nbconvert, locks by hand, signal handling) lives in builder/, and the notebooks' profiles, parameter checks and
    setup in harness/; both import lib, never the reverse."""
    banned = {"papermill", "nbconvert", "fcntl", "ctypes", "signal", "builder", "harness"}
    for path in sorted(LIB.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
        assert not names & banned, f"lib/{path.name} imports {sorted(names & banned)}"


def test_harness_never_imports_the_report_build():
    """harness/ sits between lib and builder: the notebooks run it in JupyterLab and Colab, where no build runs."""
    for path in sorted((ROOT / "harness").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
        assert not names & {"builder", "papermill", "nbconvert"}, f"harness/{path.name} imports {sorted(names)}"
