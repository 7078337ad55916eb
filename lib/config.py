"""Profiles, parameter validation, seeding and device choice — one place for all notebooks.

A notebook's parameters cell holds literals; ``None`` means "take the profile's value". The
next cell calls ``resolve(notebook, profile, **params)``, which merges explicit values over the
profile and validates everything *before* any training starts.
"""
from __future__ import annotations

import ctypes
import math
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .losses import RECON_LOSSES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("01_vae_basic", "02_vae_derivation", "03_gan", "04_beta_vae", "05_noisy_data")
PROFILE_NAMES = ("smoke", "default", "full")

# Shared by every notebook; per-notebook tables below override.
_COMMON = {
    "smoke": dict(train_subset=512, test_subset=256, n_samples=100, iwae_k=5, iwae_images=32,
                  classifier="smoke"),
    "default": dict(train_subset=None, test_subset=None, n_samples=1000, iwae_k=100, iwae_images=1000,
                    classifier="full"),
    "full": dict(train_subset=None, test_subset=None, n_samples=1000, iwae_k=1000, iwae_images=1000,
                 classifier="full"),
}

# The ConvVAE tiers (01, 02, 05): the seed's batch, latent size and Adam, but with the learning rate
# decayed along a cosine over the run. The seed kept 1e-3 constant for 250-300 epochs; a short run
# gets more from a larger start that decays to zero. Test bound of the BCE model after 8 epochs,
# measured while choosing: constant 1e-3 -> 101.7 nats, cosine from 1e-3 -> 101.2, from 2e-3 -> 100.3,
# from 3e-3 -> 99.9. lr_schedule="constant", lr=1e-3 is the seed's choice.
_VAE = dict(batch_size=64, lr=3e-3, lr_schedule="cosine", latent_dim=32, recon="bce")

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "01_vae_basic": {
        "smoke": dict(_VAE, losses=["bce", "mse", "l1"], epochs=1, ablation_epochs=1),
        "default": dict(_VAE, losses=["bce", "mse", "l1"], epochs=10, ablation_epochs=2),
        "full": dict(_VAE, losses=["bce", "mse", "l1"], epochs=250, ablation_epochs=20),
    },
    # The derivation reuses the basic tier's BCE model (same spec -> same cached run).
    "02_vae_derivation": {
        "smoke": dict(_VAE, epochs=1, iwae_ks=[1, 2, 5], mc_samples=2000),
        "default": dict(_VAE, epochs=10, iwae_ks=[1, 5, 25, 100], mc_samples=100_000),
        "full": dict(_VAE, epochs=250, iwae_ks=[1, 10, 100, 1000], mc_samples=1_000_000),
    },
    "03_gan": {
        "smoke": dict(batch_size=64, lr=1e-3, latent_dim=100, epochs=1),
        "default": dict(batch_size=64, lr=1e-3, latent_dim=100, epochs=20),
        "full": dict(batch_size=64, lr=1e-3, latent_dim=100, epochs=200),
    },
    "04_beta_vae": {
        "smoke": dict(batch_size=64, lr=1e-3, latent_dim=10, betas=[1.0, 2.0, 3.0, 4.0], epochs=1),
        "default": dict(batch_size=64, lr=1e-3, latent_dim=10, betas=[1.0, 2.0, 3.0, 4.0], epochs=8),
        "full": dict(batch_size=64, lr=1e-3, latent_dim=10, betas=[1.0, 2.0, 3.0, 4.0], epochs=15),
    },
    "05_noisy_data": {
        "smoke": dict(_VAE, noise_amounts=[0.0, 0.01, 0.1, 0.2, 0.8], epochs=1),
        "default": dict(_VAE, noise_amounts=[0.0, 0.01, 0.1, 0.2, 0.8], epochs=2),
        "full": dict(_VAE, noise_amounts=[0.0, 0.01, 0.1, 0.2, 0.8], epochs=300),
    },
}

ALWAYS = dict(seed=0, device="auto", precision="auto", output_dir="report/lab")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")


class ParameterError(ValueError):
    """A notebook parameter has a value outside its allowed set."""


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ParameterError(f"parameter {name!r} = {value!r} is invalid: allowed {allowed}")


def _int_ge(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        _fail(name, v, f"an integer >= {lo}")


def _pos_float(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        _fail(name, v, "a finite number > 0")


def _fraction(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        _fail(name, v, "a number in [0, 1]")


def _nonempty_list(name, v):
    if not isinstance(v, (list, tuple)) or len(v) == 0:
        _fail(name, v, "a non-empty list")


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU. 'cuda' without a GPU is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            deterministic_cuda()
            return torch.device("cuda")
        return torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParameterError(f"parameter 'device' = {device!r} is invalid: no CUDA GPU is available here; "
                                 "allowed 'auto' or 'cpu'")
        deterministic_cuda()
        return torch.device(device)
    _fail("device", device, "'auto', 'cpu' or 'cuda' / 'cuda:N'")


def deterministic_cuda() -> None:
    """Make CUDA runs bit-reproducible, as CPU runs are: two runs of a notebook on the same GPU
    give identical metrics.json. Without this, cuDNN's autotuned / atomic-add kernels made two
    smoke runs of 04_beta_vae on an H200 differ in the 6th digit (tests/test_reliability.py).
    Sets cuDNN's deterministic algorithms without autotuning, torch's deterministic kernels where
    they exist (a warning, not an error, where none does), and a fixed cuBLAS workspace (this env
    variable must be set before the first cuBLAS call; device resolution comes first in every
    notebook). ``GENMNIST_DETERMINISTIC=0`` leaves torch's defaults (faster, not repeatable)."""
    if os.environ.get("GENMNIST_DETERMINISTIC", "1") == "0":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where the hardware runs bf16 natively (CUDA, or a CPU with AVX-512 BF16 / AMX), else 'fp32'."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def _check_output_dir(path: str) -> Path:
    p = Path(path)
    if not p.is_absolute():
        p = ROOT / p
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ParameterError(f"parameter 'output_dir' = {str(path)!r} is invalid: it cannot be written ({e}); "
                             "allowed: a writable folder") from None
    return p


def validate(cfg: dict[str, Any]) -> None:
    """Check every known parameter; raise ParameterError naming it and the allowed values."""
    for name in ("epochs", "batch_size", "latent_dim", "n_samples", "iwae_k", "iwae_images", "mc_samples"):
        if name in cfg:
            _int_ge(name, cfg[name], 1)
    if "ablation_epochs" in cfg:
        _int_ge("ablation_epochs", cfg["ablation_epochs"], 0)
    if "seed" in cfg:
        _int_ge("seed", cfg["seed"], 0)
    for name in ("train_subset", "test_subset"):
        if cfg.get(name) is not None:
            _int_ge(name, cfg[name], 1)
    if "lr" in cfg:
        _pos_float("lr", cfg["lr"])
    for name in ("losses", "recon"):
        if name in cfg:
            names = cfg[name] if name == "losses" else [cfg[name]]
            if name == "losses":
                _nonempty_list(name, names)
            for n in names:
                if n not in RECON_LOSSES:
                    _fail(name, n, f"loss names from {sorted(RECON_LOSSES)}")
    if "betas" in cfg:
        _nonempty_list("betas", cfg["betas"])
        for b in cfg["betas"]:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
                _fail("betas", b, "numbers >= 0 (beta weights the KL term)")
    if "noise_amounts" in cfg:
        _nonempty_list("noise_amounts", cfg["noise_amounts"])
        for a in cfg["noise_amounts"]:
            _fraction("noise_amounts", a)
    if "iwae_ks" in cfg:
        _nonempty_list("iwae_ks", cfg["iwae_ks"])
        for k in cfg["iwae_ks"]:
            _int_ge("iwae_ks", k, 1)
    if "lr_schedule" in cfg and cfg["lr_schedule"] not in LR_SCHEDULES:
        _fail("lr_schedule", cfg["lr_schedule"], f"one of {list(LR_SCHEDULES)}")
    if "precision" in cfg and cfg["precision"] not in PRECISIONS:
        _fail("precision", cfg["precision"], f"one of {list(PRECISIONS)}")
    if "classifier" in cfg and cfg["classifier"] not in ("smoke", "full"):
        _fail("classifier", cfg["classifier"], "'smoke' or 'full'")


def resolve(notebook: str, profile: str = "default", **explicit: Any) -> dict[str, Any]:
    """Profile values, overridden by explicit (non-None) parameters, validated.

    Returns a plain dict with every parameter, plus ``device`` as a torch.device and
    ``output_dir`` as an absolute Path that is known to be writable."""
    if notebook not in PROFILES:
        _fail("notebook", notebook, f"one of {list(NOTEBOOKS)}")
    if profile not in PROFILE_NAMES:
        _fail("profile", profile, f"one of {list(PROFILE_NAMES)}")
    known = set(PROFILES[notebook][profile]) | set(_COMMON[profile]) | set(ALWAYS)
    unknown = sorted(set(explicit) - known - {"profile"})
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown} for {notebook}; known: {sorted(known)}")
    cfg: dict[str, Any] = {**ALWAYS, **_COMMON[profile], **PROFILES[notebook][profile]}
    cfg.update({k: v for k, v in explicit.items() if v is not None and k != "profile"})
    cfg["profile"] = profile
    validate(cfg)
    cfg["device"] = resolve_device(cfg["device"])
    cfg["precision"] = resolve_precision(cfg["precision"], cfg["device"])
    cfg["output_dir"] = _check_output_dir(cfg["output_dir"])
    return cfg


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators (the lib itself uses explicit Generators)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh torch.Generator seeded with ``seed``; all of lib's randomness flows from these."""
    return torch.Generator(device=device).manual_seed(int(seed))


def set_threads(allocator: bool = True) -> int:
    """Use every core for intra-op work (2 here) and, unless ``allocator=False``, keep freed
    activations in the heap (``tune_allocator``). Returns the thread count."""
    n = os.cpu_count() or 1
    torch.set_num_threads(n)
    if allocator:
        tune_allocator()
    return n


# glibc mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
ALLOCATOR_SETTINGS = {"M_MMAP_THRESHOLD": 32 << 20, "M_TRIM_THRESHOLD": 256 << 20, "M_TOP_PAD": 64 << 20}


def tune_allocator() -> bool:
    """Stop glibc from handing freed activation memory back to the kernel after every step.

    A training step on the CPU allocates and frees the same few MB of activations and gradients
    each time. With glibc's defaults, blocks above the mmap threshold, and free memory at the top
    of the heap beyond the trim threshold, go back to the kernel and come back as fresh, zeroed
    pages on the next step (page faults). Raising both thresholds keeps that memory in the
    process, at the cost of at most a few hundred MB of retained heap; it also makes the speed
    independent of what the process did before (glibc's default threshold moves up whenever a
    large block is freed). ``make bench`` measures it in fresh processes ('allocator_ab'; two runs
    on the 2-core machine this was built on): lib's ConvVAE path +5 to +18 %, its GAN and BetaVAE
    within noise; the seed's fp32 ConvVAE and GAN pipelines +14 to +22 %, which is why the bench
    applies it to the seed too (its in-process ratio is the conservative one). Linux/glibc only; a
    no-op elsewhere or when ``GENMNIST_ALLOCATOR=default``. Returns whether the settings were applied."""
    if not sys.platform.startswith("linux") or os.environ.get("GENMNIST_ALLOCATOR", "") == "default":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = [libc.mallopt(_M_MMAP_THRESHOLD, ALLOCATOR_SETTINGS["M_MMAP_THRESHOLD"]),
              libc.mallopt(_M_TRIM_THRESHOLD, ALLOCATOR_SETTINGS["M_TRIM_THRESHOLD"]),
              libc.mallopt(_M_TOP_PAD, ALLOCATOR_SETTINGS["M_TOP_PAD"])]
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    return all(r == 1 for r in ok)
