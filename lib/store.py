"""The one disk cache, below ``train``, ``evaluate`` and the notebooks' harness: where checkpoints live, what a run id
hashes, atomic save and checked load, and ``memo``, which keeps an evaluation's result for the next notebook."""
from __future__ import annotations

import ast
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock

from .data import ROOT

CACHE = Path(os.environ.get("GENMNIST_CACHE", ROOT / "data" / "cache"))
PACKAGES = Path(__file__).resolve().parent.parent  # lib/ and harness/ (the checkout, or site-packages)
RESULT_SOURCES = tuple(f"lib/{m}.py" for m in ("data", "models", "losses", "noise", "bounds", "train"))  # run ids
SCORE_SOURCES = (*RESULT_SOURCES, "lib/evaluate.py", "lib/stats.py")  # hashed by memo keys


def code_only(source: str) -> str:
    """A module's code without its comments and docstrings (the AST, dumped without line numbers)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and ast.get_docstring(node, clean=False) is not None:
            node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree)


def source_hash(folder: Path = PACKAGES, files=RESULT_SOURCES) -> str:
    """Digest of the code (not the prose) of ``files`` in ``folder``: editing a docstring keeps it."""
    h = hashlib.sha256()
    for name in files:
        h.update(name.encode())
        h.update(code_only((Path(folder) / name).read_text(encoding="utf-8")).encode())
    return h.hexdigest()[:16]


def checkpoint_path(run_id: str, cache: Path = CACHE) -> Path:
    return Path(cache) / run_id / "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then an atomic rename; a failed save removes its temporary file; a full
    disk is an OSError naming the path and the free space."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _out_of_space(e, path.parent):
            free = shutil.disk_usage(path.parent).free
            raise OSError(errno.ENOSPC, f"no space left on the device to save {path} ({free:,} bytes free); "
                          f"free some space or point GENMNIST_CACHE at another disk") from e
        raise


def _out_of_space(e: BaseException, folder: Path) -> bool:
    """ENOSPC / EDQUOT, or torch's writer error ("iostream error", no cause given) with under 256 MiB free."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    with contextlib.suppress(OSError):
        return isinstance(e, RuntimeError) and "iostream" in str(e) and shutil.disk_usage(folder).free < 256 * 2**20
    return False


def remove_orphans(path: Path) -> None:
    """Delete temporary files a killed save of ``path`` left (hold ``exclusive(path)``: nobody is writing)."""
    for orphan in path.parent.glob(path.name + ".tmp-*"):
        orphan.unlink(missing_ok=True)


def one_line(e: BaseException) -> str:
    """An exception's message on one line, without terminal colour codes, cut at 200 characters."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())
    return text if len(text) <= 200 else text[:199] + "…"


def set_aside(path: Path, reason: str) -> None:
    """Move an unusable checkpoint aside (as ``<name>.unusable``, for a look) and say so; the caller retrains."""
    aside = path.with_name(path.name + ".unusable")
    with contextlib.suppress(OSError):
        os.replace(path, aside)
    warnings.warn(f"checkpoint {path} is not usable ({reason}); moved to {aside.name}, retraining this run "
                  "from scratch", stacklevel=3)


def load_checkpoint(path: Path, owner: str | None = None, keys: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The checkpoint's state; None when absent, or unusable (unreadable, saved for another run than ``owner``,
    missing one of ``keys``): then reported and set aside, and the caller retrains."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means "retrain"
        set_aside(path, f"corrupted: {type(e).__name__}: {one_line(e)}")
        return None
    problem = None
    if not isinstance(state, dict):
        problem = f"it holds a {type(state).__name__}, not a checkpoint"
    elif owner is not None and state.get("run_id") != owner:
        problem = f"it was saved for run {state.get('run_id')!r}, not {owner!r}"
    elif missing := [k for k in keys if k not in state]:
        problem = f"it lacks {missing}"
    if problem:
        set_aside(path, problem)
        return None
    return state


def exclusive(path: Path) -> FileLock:
    """Hold ``<path>.lock`` (filelock; dropped when the process ends) for the block: of two notebooks that
    need one model or score, the first computes it and the second waits here, then loads it."""
    lock = Path(path).with_name(Path(path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(lock)


def digest(*parts: Any) -> str:
    """A short sha256 of ``parts``: tensors by dtype, shape and bytes, modules by their state, the rest by JSON."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.nn.Module):
            p = p.state_dict()
        if isinstance(p, dict) and all(isinstance(v, torch.Tensor) for v in p.values()):
            for name, t in p.items():
                h.update(name.encode())
                h.update(digest(t).encode())
        elif isinstance(p, torch.Tensor):
            t = p.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def memo(kind: str, key: dict[str, Any], compute: Callable[[], Any], cache: Path = CACHE,
         files: tuple[str, ...] = SCORE_SOURCES) -> Any:
    """``compute()``, kept in ``cache/scores/`` under ``key`` and the code of ``SCORE_SOURCES``; always the loaded
    copy (tuples become lists), so a first and a later call give the same types. An unreadable entry is computed
    again; ``GENMNIST_MEMO=0`` turns keeping off."""
    if os.environ.get("GENMNIST_MEMO", "1") == "0":
        return compute()
    path = Path(cache) / "scores" / f"{kind}-{digest(key, source_hash(files=files))}.pt"
    with exclusive(path):
        remove_orphans(path)
        if path.exists():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)["value"]
            except Exception as e:  # noqa: BLE001 - any unreadable entry means "compute again"
                warnings.warn(f"kept score {path} is unreadable ({type(e).__name__}: {e}); computing it again")
        save_checkpoint(path, {"value": compute(), "kind": kind})
        return torch.load(path, map_location="cpu", weights_only=True)["value"]
