"""Progress where a person watches: a live bar in JupyterLab (tqdm.auto's widget), a text bar in a
terminal, nothing in CI. ``make report`` saves each kernel's output into the report, so it sets
``GENMNIST_PROGRESS_FILE`` instead: progress lines go to that file, which it prints to its own terminal."""
from __future__ import annotations

import os
import time

PROGRESS_FILE = "GENMNIST_PROGRESS_FILE"
LINE_EVERY = 15.0  # seconds between two progress lines in the file


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _lines(iterable, total: int, desc: str, path: str):
    """Yield from ``iterable``, appending 'desc: i/total, elapsed, ~left' to ``path`` now and then."""
    start = last = time.monotonic()
    with open(path, "a", encoding="utf-8") as f:
        for i, item in enumerate(iterable, 1):
            yield item
            now = time.monotonic()
            if now - last >= LINE_EVERY or i == total:
                left = (total - i) * (now - start) / i
                f.write(f"{desc}: {i}/{total}, {_duration(now - start)} elapsed, ~{_duration(left)} left\n")
                f.flush()
                last = now


def progress(iterable, total: int, desc: str, enabled: bool = True):
    """``iterable`` with progress shown; unchanged when ``enabled`` is False or in CI (``CI`` set)."""
    if not enabled or os.environ.get("CI"):
        return iterable
    if os.environ.get(PROGRESS_FILE):
        return _lines(iterable, total, desc, os.environ[PROGRESS_FILE])
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, mininterval=1.0, unit="batch")
