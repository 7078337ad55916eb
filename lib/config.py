"""Profiles, parameter validation, seeding and device choice — one place for all notebooks.

A notebook's parameters cell holds the default profile's values as literals; the next cell calls
``lib.notebook.setup``, which calls ``resolve(notebook, profile, **params)``: the values merged over the
profile and validated against ``SCHEMA`` *before* any training starts (``make report`` calls it too).
"""
from __future__ import annotations

import math
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data
from .losses import RECON_LOSSES

ROOT = data.ROOT  # the project checkout (lib.data.project_root)
NOTEBOOKS = ("01_vae_basic", "02_vae_derivation", "03_gan", "04_beta_vae", "05_noisy_data")
PROFILE_NAMES = ("smoke", "quick", "default", "full", "study")

# Shared by every notebook; per-notebook tables below override.
_COMMON = {
    # smoke's n_samples: the smallest round count above FID_FEATURES (see SCHEMA)
    "smoke": dict(train_subset=512, test_subset=256, n_samples=200, iwae_k=5, iwae_images=32,
                  classifier="smoke"),
    # quick: a first look in JupyterLab in minutes on a laptop CPU (a third of the training set, one seed,
    # 3 epochs): real digits and every figure, verdicts that are mostly inconclusive
    "quick": dict(train_subset=20_000, test_subset=2000, n_samples=2000, iwae_k=20, iwae_images=200,
                  classifier="full"),
    # 10,000 samples: the classifier-FID's bias and spread at 1,000 were as large as the gaps it judged
    "default": dict(train_subset=None, test_subset=None, n_samples=10_000, iwae_k=100, iwae_images=1000,
                    classifier="full"),
    "full": dict(train_subset=None, test_subset=None, n_samples=10_000, iwae_k=1000, iwae_images=10_000,
                 classifier="full"),
    # study: the budget ladder (make study, builder/study.py) scores every rung: 5,000 samples (the FID's floor
    # is measured at the same size) and smaller IWAE bounds keep four rungs within about two hours on 2 cores
    "study": dict(train_subset=None, test_subset=None, n_samples=5000, iwae_k=20, iwae_images=500, classifier="full"),
}

# The ConvVAE tiers (01, 02, 05): the course report's batch, latent size and Adam, but with the learning rate
# decayed along a cosine over the run. The course report kept 1e-3 constant for 250-300 epochs; a short run
# gets more from a larger start that decays to zero. Chosen on a validation split, never on the test set:
# tools/choose_lr.py (bench/lr_choice.json); lr_schedule="constant", lr=1e-3 is the course report's choice.
# adam_beta2: 0.99 instead of torch's (and the course report's) 0.999, chosen after the learning rate on the
# same split by tools/choose_adam.py (bench/adam_choice.json).
_VAE = dict(batch_size=64, lr=3e-3, lr_schedule="cosine", adam_beta2=0.99, latent_dim=32, recon="bce")
MATCHED_WEIGHTS = {"mse": 3.1, "l1": 1.75}  # tools/match_rate.py, bench/rate_match.json
# the study profile trains with the course report's constant lr 1e-3 and Adam (0.9, 0.999): a shorter budget is
# then exactly the start of a longer one (lib.train continues the cached shorter run), so one run serves every rung
_COURSE = dict(_VAE, lr=1e-3, lr_schedule="constant", adam_beta2=0.999)
_V = {p: _COURSE if p == "study" else _VAE for p in PROFILE_NAMES}

# Each notebook's table: values per profile, in the order of PROFILE_NAMES (smoke, quick, default, full).
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # seeds: training seeds of the BCE model; other_seeds: of the MSE and L1 models (two or more, so each
    # compared arm has a seed spread of its own); the no-KL and matched-rate models train the first seed
    # only (lib.claims judges a one-seed arm by its own rule). Ablations train as long as the models.
    # matched_weights: the reconstruction weight per loss whose model has the BCE model's rate (KL), chosen
    # on training images by tools/match_rate.py for the default profile; full reuses them and its notebook
    # checks whether the rates still agree. {} skips the comparison.
    # study: no matched-rate models (their weights were matched at the default budget and schedule)
    "01_vae_basic": {p: dict(_V[p], losses=["bce", "mse", "l1"], epochs=e, ablation_epochs=e, seeds=s,
                             other_seeds=o, matched_weights=dict(m))
                     for p, e, s, o, m in zip(PROFILE_NAMES, (1, 3, 5, 250, 5), (2, 1, 3, 3, 2), (1, 1, 2, 3, 2),
                                              ({"mse": 10.0, "l1": 3.0}, {}, MATCHED_WEIGHTS, MATCHED_WEIGHTS, {}))},
    # The derivation reuses the basic tier's BCE model (same spec -> same cached run). binarised_k /
    # binarised_images: the IWAE bound on dynamically binarised test digits, the number the literature
    # reports (Burda et al. 2016 use k = 5000 on all 10,000)
    "02_vae_derivation": {p: dict(_V[p], epochs=e, iwae_ks=ks, mc_samples=mc, binarised_k=k, binarised_images=n)
                          for p, e, ks, mc, k, n in zip(
                              PROFILE_NAMES, (1, 3, 5, 250, 5),
                              ([1, 2, 5], [1, 5, 25], [1, 5, 25, 100], [1, 10, 100, 1000], [1, 5, 25, 100]),
                              (2000, 10_000, 100_000, 1_000_000, 100_000), (5, 50, 500, 5000, 500),
                              (32, 200, 1000, 10_000, 1000))},
    # seeds: training seeds of the GAN; the VAE it is compared with is the basic tier's BCE model (its seeds),
    # trained for vae_epochs (01's epochs)
    "03_gan": {p: dict(batch_size=64, lr=1e-3, latent_dim=100, epochs=e, seeds=s, vae_epochs=v)
               for p, e, s, v in zip(PROFILE_NAMES, (1, 5, 20, 200, 20), (2, 1, 3, 3, 2), (1, 3, 5, 250, 5))},
    # collapse_betas: large β, where the posterior collapses and "superimposed digits" can arise
    "04_beta_vae": {p: dict(batch_size=64, lr=1e-3, latent_dim=10, betas=[1.0, 2.0, 3.0, 4.0], epochs=e,
                            latent2_epochs=e, seeds=s, collapse_betas=c)
                    for p, e, s, c in zip(PROFILE_NAMES, (1, 3, 8, 15, 8), (2, 1, 3, 3, 2),
                                          ([1000.0], [1000.0], [50.0, 200.0, 1000.0], [50.0, 200.0, 1000.0],
                                           [50.0, 200.0, 1000.0]))},
    # The same budget as the basic tier, so that the 0 % model *is* its BCE run (same spec, one cache entry,
    # its seeds included); seeds: of the 0 % model, other_seeds: of each noisy one. denoise_amounts: a
    # denoising VAE (noisy input, clean target) per level, the fair test of "cleans images"
    "05_noisy_data": {p: dict(_V[p], noise_amounts=a, denoise_amounts=d, epochs=e, seeds=s, other_seeds=o)
                      for p, a, d, e, s, o in zip(
                          PROFILE_NAMES, ([0.0, 0.1, 0.8], [0.0, 0.1, 0.8]) + ([0.0, 0.01, 0.1, 0.2, 0.8],) * 3,
                          ([0.8], [0.1], [0.1, 0.8], [0.1, 0.8], [0.1, 0.8]), (1, 3, 5, 250, 5), (2, 1, 3, 3, 2),
                          (1, 1, 1, 3, 1))},
}
ALWAYS = dict(seed=0, device="auto", precision="auto", output_dir="report/lab")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")


class ParameterError(ValueError):
    """A notebook parameter has a value outside its allowed set."""


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ParameterError(f"parameter {name!r} = {value!r} is invalid: allowed {allowed}")


# Sizes that bound the parameters (checked before any training, rather than failing after it).
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000  # MNIST's splits (lib.data checks their files)
# the validation split that chooses hyperparameters (tools/choose_lr.py, match_rate.py, choose_batch.py): the
# last 5,000 training images; a candidate trains on the 55,000 before them, never on the test set
VALIDATION_IMAGES = 5_000
FID_FEATURES = 128  # the classifier's penultimate features, to which the FID fits a Gaussian
SEED_MAX = 2**32 - 1  # NumPy's global seed (seed_everything) takes 32 bits; lib's torch generators get
# seed * 1_000_003 + epoch + 500_000 (train.epoch_generators), which stays far below torch's 2**64 for such seeds
GAN_NOTEBOOKS = ("03_gan",)  # train a GAN, whose generator's BatchNorm1d needs >= 2 images in every batch
NONE_MEANS_ALL = {"train_subset": int, "test_subset": int}  # None = every image of the split


def _ints(lo: int, hi: int, why: str):
    return int, lambda v: lo <= v <= hi, f"an integer in [{lo}, {hi}] ({why})"


def _choice(options, allowed: str = "one of") -> tuple:
    return str, lambda v: v in tuple(options), f"{allowed} {list(options)}"


_MEMORY, _RUN = "importance samples per image; more does not fit in memory", "10000 bounds a run's time and history"
_SEEDS = _ints(1, 100, "each training seed trains one model per arm")
_IMAGES = _ints(2, TEST_IMAGES, f"a standard error needs two images; there are {TEST_IMAGES} test images")
# name: (shape, type, test, allowed values). shape: "" one value, "?" one value or None, "[]" a list, "[+]" a
# non-empty list, "{}" a dict loss name -> value. Numbers must be finite; text numbers are read as numbers.
SCHEMA: dict[str, tuple] = {
    "seed": ("", *_ints(0, SEED_MAX, "NumPy's global seed takes 32 bits")),
    "train_subset": ("?", *_ints(1, TRAIN_IMAGES, f"the training split has {TRAIN_IMAGES} images; None takes all")),
    "test_subset": ("?", *_ints(FID_FEATURES + 1, TEST_IMAGES, f"the FID's reference Gaussian is fitted to the test "
                                f"images, which needs more of them than its {FID_FEATURES} dimensions; the test "
                                f"split has {TEST_IMAGES} images; None takes all")),
    "n_samples": ("", *_ints(FID_FEATURES + 1, 100_000, f"the FID fits a Gaussian to the classifier's {FID_FEATURES}"
                             "-d features, which needs more samples than dimensions; at most 100000 keeps the "
                             "samples in memory")),
    "iwae_k": ("", *_ints(1, 100_000, _MEMORY)),
    "iwae_ks": ("[+]", *_ints(1, 100_000, _MEMORY)),
    "iwae_images": ("", *_IMAGES), "binarised_k": ("", *_ints(1, 100_000, _MEMORY)), "binarised_images": ("", *_IMAGES),
    "mc_samples": ("", *_ints(1000, 10_000_000, "the Monte-Carlo checks compare a mean with its standard error, "
                              "which needs enough draws to be estimated itself; more does not fit in memory")),
    "epochs": ("", *_ints(1, 10_000, f"the course report trained at most 300 epochs; {_RUN}")),
    "vae_epochs": ("", *_ints(1, 10_000, f"the basic tier's epochs; {_RUN}")),
    "ablation_epochs": ("", *_ints(0, 10_000, f"0 skips the no-KL runs; {_RUN}")),
    "latent2_epochs": ("", *_ints(0, 10_000, f"0 skips the 2-d run; {_RUN}")),
    "batch_size": ("", *_ints(1, TRAIN_IMAGES, f"a batch holds at most the {TRAIN_IMAGES} training images")),
    "latent_dim": ("", *_ints(1, 1024, "the ConvVAE gives each latent dimension 3 x 6,272 weights; 1024 keeps a "
                              "model under 80 MB")),
    "seeds": ("", *_SEEDS), "other_seeds": ("", *_SEEDS),
    "lr": ("", float, lambda v: v > 0, "a finite number > 0"),
    "adam_beta2": ("", float, lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.99 (the profiles) or 0.999 (the "
                                                   "course report's)"),
    "betas": ("[+]", float, lambda v: v >= 0, "numbers >= 0 (beta weights the KL term)"),
    "collapse_betas": ("[]", float, lambda v: v > 0, "numbers > 0 (empty skips the collapse runs)"),
    "noise_amounts": ("[+]", float, lambda v: 0 <= v <= 1, "numbers in [0, 1]"),
    "denoise_amounts": ("[]", float, lambda v: 0 < v < 1, "numbers in (0, 1): the noise a denoising VAE removes "
                                                          "([] skips them)"),
    "losses": ("[+]", *_choice(sorted(RECON_LOSSES), "loss names from")), "recon": ("", *_choice(sorted(RECON_LOSSES), "loss names from")),
    "matched_weights": ("{}", float, lambda v: v > 0, "finite weights > 0"),
    "lr_schedule": ("", *_choice(LR_SCHEDULES)), "precision": ("", *_choice(PRECISIONS)),
    "classifier": ("", *_choice(("smoke", "full"))),
}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _coerce(name: str, value: Any) -> Any:
    """A number written as text (YAML 1.1, which papermill's and make report's ``-p`` use, reads ``1e-3`` as
    the string '1e-3') becomes the number where SCHEMA wants numbers; anything else is left for validate."""
    typ = SCHEMA.get(name, (None, None))[1]
    if isinstance(value, (list, tuple)):
        return [_coerce(name, v) for v in value]
    if isinstance(value, dict):
        return {k: _coerce(name, v) for k, v in value.items()}
    if typ in (int, float) and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
        return int(number) if typ is int and number.is_integer() else number
    return value


def _ok(typ, test, v) -> bool:
    """``v`` has SCHEMA's type (a finite number where it wants numbers, never a bool) and passes its test."""
    if typ is str:
        return test(v)
    number = isinstance(v, int) if typ is int else isinstance(v, (int, float)) and math.isfinite(v)
    return number and not isinstance(v, bool) and test(v)


def validate(cfg: dict[str, Any], notebook: str | None = None) -> None:
    """Check every parameter in ``cfg`` against SCHEMA, then the rules that tie two together; raise
    ParameterError naming the parameter and the allowed values. Values that would fail only after training
    (too few samples for a statistic, too many for memory, a seed NumPy rejects, a subset larger than its
    split) are refused here too."""
    for name, (shape, typ, test, allowed) in SCHEMA.items():
        if name not in cfg or shape == "?" and cfg[name] is None:
            continue
        v = cfg[name]
        if shape in ("[]", "[+]"):
            if not isinstance(v, (list, tuple)) or shape == "[+]" and not v:
                _fail(name, v, f"a{' non-empty' if shape == '[+]' else ''} list (papermill's -p passes text: use "
                               f"-y \"{name}: [1, 8]\"; make report reads P='-p {name} [1,8]' itself) of {allowed}")
            for x in v:
                if not _ok(typ, test, x):
                    _fail(name, x, allowed)
        elif shape == "{}":
            names = sorted(set(RECON_LOSSES) - {"bce"})
            bad = [f" ({k!r} has {w!r})" for k, w in v.items() if not _ok(typ, test, w)] if isinstance(v, dict) else []
            if not isinstance(v, dict) or set(v) - set(names) or bad:
                _fail(name, v, f"a dict of loss name -> weight ({{}} skips), names from {names} (BCE is the reference rate), "
                               f"{allowed}{bad[0] if bad else ''}")
        elif not _ok(typ, test, v):
            _fail(name, v, ("None or " if shape == "?" else "") + allowed)
    for name in ("seeds", "other_seeds"):
        if name in cfg and cfg.get("seed", 0) + cfg[name] - 1 > SEED_MAX:
            _fail(name, cfg[name], f"a count that keeps seed + {name} - 1 <= {SEED_MAX} (seed = {cfg.get('seed', 0)})")
    if "iwae_ks" in cfg and len(set(cfg["iwae_ks"]) | ({cfg.get("iwae_k")} - {None})) < 2:
        _fail("iwae_ks", cfg["iwae_ks"], f"at least two different k counting iwae_k = {cfg.get('iwae_k')} "
                                         "(the IWAE curve compares the bound across k)")
    if notebook in GAN_NOTEBOOKS and "batch_size" in cfg:
        n, bs = cfg.get("train_subset") or TRAIN_IMAGES, cfg["batch_size"]
        if n - bs * ((n - 1) // bs) == 1:  # the last batch (of ceil(n / bs)) holds one image
            name, value = ("train_subset", n) if n == 1 else ("batch_size", bs)
            _fail(name, value, f"values whose batches all hold >= 2 images (the GAN's BatchNorm needs two); "
                               f"{n} training images in batches of {bs} leave a last batch of 1 image")


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU. 'cuda' without a GPU is an error."""
    if device == "cpu" or device == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device != "auto" and not (isinstance(device, str) and device.startswith("cuda")):
        _fail("device", device, "'auto', 'cpu' or 'cuda' / 'cuda:N'")
    if not torch.cuda.is_available():
        raise ParameterError(f"parameter 'device' = {device!r} is invalid: no CUDA GPU is available here; "
                             "allowed 'auto' or 'cpu'")
    deterministic_cuda()
    return torch.device("cuda" if device == "auto" else device)


def deterministic_cuda() -> None:
    """Make CUDA runs bit-reproducible, as CPU runs are: without this, cuDNN's autotuned / atomic-add kernels
    made two smoke runs of 04_beta_vae on an H200 differ in the 6th digit (tests/test_reliability.py).
    torch's deterministic kernels warn, not fail, where none exists; the cuBLAS workspace variable must be
    set before the first cuBLAS call (device resolution comes first in every notebook).
    ``GENMNIST_DETERMINISTIC=0`` leaves torch's defaults (faster, not repeatable)."""
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
    p = ROOT / path  # an absolute path stays as it is
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ParameterError(f"parameter 'output_dir' = {str(path)!r} is invalid: it cannot be written ({e}); "
                             "allowed: a writable folder") from None
    return p


def parameter_names(notebook: str) -> list[str]:
    """Every parameter ``notebook`` takes: its profile keys, the shared ones, and ``profile``."""
    if notebook not in PROFILES:
        _fail("notebook", notebook, f"one of {list(NOTEBOOKS)}")
    return sorted({*PROFILES[notebook]["default"], *_COMMON["default"], *ALWAYS, "profile"})


def resolve(notebook: str, profile: str = "default", **explicit: Any) -> dict[str, Any]:
    """Profile values, overridden by explicit (non-None) parameters, validated. The notebooks' parameters
    cells hold the default profile's values as literals: under another profile, a value left equal to the
    default profile's takes that profile's value (``profile = "smoke"`` shrinks what was not changed).

    Returns a plain dict with every parameter, plus ``device`` as a torch.device and
    ``output_dir`` as an absolute Path that is known to be writable."""
    known = parameter_names(notebook)
    if profile not in PROFILE_NAMES:
        _fail("profile", profile, f"one of {list(PROFILE_NAMES)}")
    unknown = sorted(set(explicit) - set(known))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown} for {notebook}; known: {known}")
    cfg: dict[str, Any] = {**ALWAYS, **_COMMON[profile], **PROFILES[notebook][profile]}
    default = {**ALWAYS, **_COMMON["default"], **PROFILES[notebook]["default"]}
    for k, v in explicit.items():
        value = _coerce(k, v)
        if v is not None and k != "profile" and (profile == "default" or value != default[k]):
            cfg[k] = value  # left at the default profile's value: the profile's
    cfg["profile"] = profile
    validate(cfg, notebook)
    cfg["device"] = resolve_device(cfg["device"])
    cfg["precision"] = resolve_precision(cfg["precision"], cfg["device"])
    cfg["output_dir"] = _check_output_dir(cfg["output_dir"])
    return cfg


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators (the lib itself uses explicit Generators)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads() -> int:
    """Use every core for intra-op work, unless the user capped threads with OMP_NUM_THREADS
    (then torch already follows it). Returns the thread count."""
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(os.cpu_count() or 1)
    return torch.get_num_threads()
