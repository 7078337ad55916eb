"""``make pages``: after an edit to the notebooks' prose only, refresh the report's pages without executing anything.

    python -m builder.prose [--report report]

A build takes an hour or more; a corrected sentence in a Markdown cell, a comment or a docstring changes no
number. For each notebook ``report/`` holds, this checks that the source notebook's code is what the executed
one ran (``code_of``: each code cell's syntax tree without comments, and its tags) and then puts the source's
Markdown cells, and its code cells' text, around the executed cells' outputs, and renders the page again. A
notebook whose code changed is refused, naming the first cell that differs: that needs ``make report``. The
manifest records the commit the prose came from (``prose``); the numbers stay those of the build it names.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import html
from . import report as build

INJECTED = "injected-parameters"  # papermill's cell of the build's parameters, after the 'parameters' cell
RESULT_PATHS = build.KERNEL_SOURCES  # what can change a number of the report


def _module_code(source: str) -> str:
    """A module's code without its comments and docstrings (``lib.store.code_only``, as run ids hash it)."""
    from lib.store import code_only

    return code_only(source)


def code_of(path: str, text: str | None) -> Any:
    """What in one source file can change a number: a module's code without its comments and docstrings, a
    notebook's code cells that way with their tags (papermill reads the 'parameters' tag), any other file as it
    is; None where the file does not exist. A cell that is not Python (a magic) is compared as text."""
    if text is None:
        return None
    if path.endswith(".ipynb"):
        try:
            cells = [c for c in json.loads(text)["cells"] if c["cell_type"] == "code"]
        except (ValueError, KeyError, TypeError):  # not a notebook: compare the text
            return text
        return [_cell_code(c) for c in cells if INJECTED not in _tags(c)]
    if path.endswith(".py"):
        try:
            return _module_code(text)
        except SyntaxError:
            return text
    return text


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _cell_code(cell) -> tuple[list[str], str]:
    source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    try:
        return _tags(cell), _module_code(source)
    except SyntaxError:
        return _tags(cell), source


def changed_code(manifest: dict, paths=RESULT_PATHS) -> list[str] | None:
    """The files of ``paths`` (git pathspecs) whose code has changed since the build ``manifest`` describes: [] when none has (the same
    sources hash; or a clean build at a commit from which no such file has changed, committed, staged or
    untracked, except in its prose: comments, docstrings, a notebook's Markdown cells, ``prose.code_of``);
    None when it cannot be told (a build from uncommitted code, no commit, no git)."""
    if manifest.get("sources_sha256") == build.sources_hash():
        return []
    commit = manifest.get("git_commit")
    if manifest.get("git_dirty") is not False or not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{40}", commit):
        return None

    def git(*args):
        return subprocess.run(["git", *args], cwd=build.ROOT, capture_output=True, text=True, timeout=60)

    out = []
    try:
        changed = git("diff", "--name-only", "--no-renames", "-z", commit, "--", *paths)
        untracked = git("ls-files", "--others", "--exclude-standard", "-z", "--", *paths)
        if changed.returncode or untracked.returncode:
            return None
        for path in sorted({p for p in (changed.stdout + untracked.stdout).split("\0") if p}):
            old = git("show", f"{commit}:{path}")
            file = build.ROOT / path
            if code_of(path, old.stdout if old.returncode == 0 else None) != \
                    code_of(path, file.read_text(encoding="utf-8") if file.is_file() else None):
                out.append(path)
    except (OSError, UnicodeDecodeError, subprocess.SubprocessError):  # no git, or not a checkout: rebuild
        return None
    return out


class ProseError(build.ReportError):
    """A notebook's code is not what its page ran: the page needs ``make report``."""


def merge(source: dict, executed: dict, name: str) -> dict | None:
    """The executed notebook with the source's prose: its Markdown cells and its code cells' text, each code cell
    keeping the executed one's outputs, papermill's injected cell kept after the 'parameters' cell. None when
    nothing differs; ProseError when a code cell does (or a code cell was added or removed)."""
    ran = [c for c in executed["cells"] if c["cell_type"] == "code" and INJECTED not in _tags(c)]
    code = [c for c in source["cells"] if c["cell_type"] == "code"]
    for i, (s, e) in enumerate(zip(code, ran)):
        if _cell_code(s) != _cell_code(e):
            first = "".join(s["source"]).strip().splitlines()[:1]
            raise ProseError(f"{name}: code cell {i + 1} ({first[0][:60] if first else 'empty'!r}...) is not the code "
                             "the report's page ran (or its tags differ); only Markdown, comments and docstrings may "
                             f"change here. Rebuild it: make report NB={name}")
    if len(code) != len(ran):
        raise ProseError(f"{name}: the notebook has {len(code)} code cells, the report's page ran {len(ran)}; "
                         f"rebuild it: make report NB={name}")
    outputs = iter(ran)
    injected = [c for c in executed["cells"] if INJECTED in _tags(c)]
    by_id = {c.get("id"): c for c in executed["cells"]}
    cells = []
    for cell in source["cells"]:
        if cell["cell_type"] == "code":
            new = copy.deepcopy(next(outputs))
            new["source"] = cell["source"]
            cells.append(new)
            if "parameters" in _tags(cell):
                cells += injected
        else:  # the executed cell of the same id keeps papermill's metadata: only the text changes
            old = by_id.get(cell.get("id"))
            new = copy.deepcopy(old if old is not None and old["cell_type"] == cell["cell_type"] else cell)
            new["source"] = cell["source"]
            if "attachments" in cell or "attachments" in new:
                new["attachments"] = copy.deepcopy(cell.get("attachments", {}))
            cells.append(new)
    merged = dict(executed, cells=cells)
    return None if merged["cells"] == executed["cells"] else merged


def refresh(report: Path = build.REPORT, nb_dir: Path = build.NB_DIR) -> list[str]:
    """Refresh the pages of every notebook ``report`` holds from the prose of ``nb_dir``'s notebooks (see the
    module's docstring); returns the notebooks whose pages changed. Everything is checked and rendered in a
    temporary folder first: a refused or failed notebook leaves the report as it was."""
    report = Path(report)
    with build.report_lock(report):
        manifest_path = report / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        notebooks = [nb for nb in manifest.get("notebooks", {}) if (report / f"{nb}.ipynb").exists()]
        if not notebooks:
            raise ProseError(f"{report} holds no executed notebook to refresh (make report builds them)")
        moved = [f for f in changed_code(manifest) or [] if not f.startswith("notebooks/")]
        if moved:  # the notebooks' prose would describe code that did not compute the page's numbers
            raise ProseError(f"the code of {', '.join(moved)} has changed since {report} was built "
                             f"(commit {str(manifest.get('git_commit'))[:7]}): its pages need make report, not make pages")
        with tempfile.TemporaryDirectory(prefix=f"{report.name}.tmp-prose-", dir=report.parent) as tmp:
            changed = []
            for nb in notebooks:
                source = json.loads((Path(nb_dir) / f"{nb}.ipynb").read_text(encoding="utf-8"))
                executed = json.loads((report / f"{nb}.ipynb").read_text(encoding="utf-8"))
                merged = merge(source, executed, nb)
                if merged is None:
                    continue
                verdicts = report / "verdicts" / f"{nb}.json"  # the page's findings box reads it
                if verdicts.exists():
                    (Path(tmp) / "verdicts").mkdir(exist_ok=True)
                    (Path(tmp) / "verdicts" / verdicts.name).write_bytes(verdicts.read_bytes())
                (Path(tmp) / f"{nb}.ipynb").write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n",
                                                       encoding="utf-8")
                html.export(Path(tmp) / f"{nb}.ipynb", Path(tmp) / f"{nb}.html")
                changed.append(nb)
            for nb in changed:  # all rendered: now replace, each file atomically
                for ext in (".ipynb", ".html"):
                    os.replace(Path(tmp) / f"{nb}{ext}", report / f"{nb}{ext}")
        commit = build._git("rev-parse", "HEAD")
        if changed:
            manifest["prose"] = {"git_commit": commit, "git_dirty": build.git_dirty(),
                                 "refreshed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                 "notebooks": sorted(set(manifest.get("prose", {}).get("notebooks", [])) | set(changed)),
                                 "note": "Markdown cells, comments and docstrings of these pages come from this "
                                         "commit; their code and every number from the build at git_commit"}
            tmp_manifest = manifest_path.with_name(manifest_path.name + f".tmp-{os.getpid()}")
            tmp_manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            os.replace(tmp_manifest, manifest_path)
        html.write_index(report, changed_code(manifest))
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", default=str(build.REPORT), help="the report folder (default: report/)")
    ap.add_argument("--notebooks", default=str(build.NB_DIR), help="the source notebooks (default: notebooks/)")
    args = ap.parse_args(argv)
    try:
        changed = refresh(Path(args.report), Path(args.notebooks))
    except build.ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    print(f"pages refreshed: {', '.join(changed)}" if changed else "every page already has the notebooks' prose")
    return 0


if __name__ == "__main__":
    sys.exit(main())
