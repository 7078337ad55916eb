"""Profiles, parameter validation, seeding and device choice, one place for all notebooks.

A notebook's parameters cell holds the default profile's values as literals; the next cell calls
``harness.notebook.setup``, which calls ``resolve``: the values merged over the profile and checked against
``SCHEMA`` before any training starts (``make report`` calls it too).
"""
from __future__ import annotations

import math
import os
import random
import re
import tempfile
from typing import Any

import numpy as np
import torch

from lib import data
from lib.losses import RECON_LOSSES
from lib.train import LR_SCHEDULES

ROOT = data.ROOT  # the project checkout
NOTEBOOKS = ("01_vae_basic", "02_vae_derivation", "03_gan", "04_beta_vae", "05_noisy_data")
PROFILE_NAMES = ("smoke", "quick", "default", "full", "study")

# Shared by every notebook; the tables below override. smoke: the smallest round n_samples above FID_FEATURES.
# quick: a first look on a laptop CPU in minutes (a third of the training set, one seed, 3 epochs), verdicts mostly
# inconclusive. default: 10,000 samples, as the classifier-FID's bias and spread at 1,000 were as large as the gaps it
# judged. study: the budget ladder (make study) scores every rung: 5,000 samples (the FID's floor is measured at that
# size) and smaller IWAE bounds keep four rungs near three hours on 2 cores with bf16.
_ALL = dict(train_subset=None, test_subset=None)  # every image of each split
_COMMON = {
    "smoke": dict(train_subset=512, test_subset=256, n_samples=200, iwae_k=5, iwae_images=32, classifier="smoke"),
    "quick": dict(train_subset=20_000, test_subset=2000, n_samples=2000, iwae_k=20, iwae_images=200, classifier="full"),
    "default": dict(_ALL, n_samples=10_000, iwae_k=100, iwae_images=1000, classifier="full"),
    "full": dict(_ALL, n_samples=10_000, iwae_k=1000, iwae_images=10_000, classifier="full"),
    "study": dict(_ALL, n_samples=5000, iwae_k=20, iwae_images=500, classifier="full"),
}

# The ConvVAE tiers (01, 02, 05): the course report's batch, latent size and Adam, but the learning rate decays along
# a cosine: the course report kept 1e-3 constant for 250-300 epochs; a short run gets more from a larger start that
# decays to zero. lr, then adam_beta2 (0.99, not torch's and the course report's 0.999), were chosen on a validation
# split, never on the test set: tools/choose_lr.py and choose_adam.py (bench/lr_choice.json, adam_choice.json).
_VAE = dict(batch_size=64, lr=3e-3, lr_schedule="cosine", adam_beta2=0.99, latent_dim=32, recon="bce")
MATCHED_WEIGHTS = {"mse": 3.1, "l1": 1.75}  # tools/match_rate.py, bench/rate_match.json
# study trains with the course report's constant lr 1e-3 and Adam (0.9, 0.999): a shorter budget is then exactly the
# start of a longer one (lib.train continues the cached shorter run), so one run serves every rung
_V = {p: dict(_VAE, lr=1e-3, lr_schedule="constant", adam_beta2=0.999) if p == "study" else _VAE for p in PROFILE_NAMES}

# Each notebook's table: values per profile, in the order of PROFILE_NAMES.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # seeds: training seeds of the BCE model; other_seeds: of the MSE and L1 models (two or more, so each compared
    # arm has a seed spread of its own); the no-KL and matched-rate models train the first seed only (lib.claims
    # judges a one-seed arm by its own rule). matched_weights: the reconstruction weight per loss that gives the BCE
    # model's rate (KL), matched by tools/match_rate.py for the default profile; full reuses them and its notebook
    # checks the rates still agree; study has none (matched at another budget and schedule); {} skips the comparison
    "01_vae_basic": {p: dict(_V[p], losses=["bce", "mse", "l1"], epochs=e, ablation_epochs=e, seeds=s,
                             other_seeds=o, matched_weights=dict(m))
                     for p, e, s, o, m in zip(PROFILE_NAMES, (1, 3, 5, 250, 5), (2, 1, 3, 3, 2), (1, 1, 2, 3, 2),
                                              ({"mse": 10.0, "l1": 3.0}, {}, MATCHED_WEIGHTS, MATCHED_WEIGHTS, {}))},
    # reuses the basic tier's BCE model (same spec, same cached run). binarised_k / _images: the IWAE bound on
    # dynamically binarised test digits, the number the literature reports (Burda et al. 2016: k = 5000, all 10,000)
    "02_vae_derivation": {p: dict(_V[p], epochs=e, iwae_ks=ks, mc_samples=mc, binarised_k=k, binarised_images=n)
                          for p, e, ks, mc, k, n in zip(
                              PROFILE_NAMES, (1, 3, 5, 250, 5),
                              ([1, 2, 5], [1, 5, 25], [1, 5, 25, 100], [1, 10, 100, 1000], [1, 5, 25, 100]),
                              (2000, 10_000, 100_000, 1_000_000, 100_000), (5, 50, 500, 5000, 500),
                              (32, 200, 1000, 10_000, 1000))},
    # seeds: of the GAN; the VAE it is compared with is the basic tier's BCE model, trained vae_epochs (01's epochs)
    "03_gan": {p: dict(batch_size=64, lr=1e-3, latent_dim=100, epochs=e, seeds=s, vae_epochs=v)
               for p, e, s, v in zip(PROFILE_NAMES, (1, 5, 20, 200, 20), (2, 1, 3, 3, 2), (1, 3, 5, 250, 5))},
    # collapse_betas: large β, where the posterior collapses and "superimposed digits" can arise
    "04_beta_vae": {p: dict(batch_size=64, lr=1e-3, latent_dim=10, betas=[1.0, 2.0, 3.0, 4.0], epochs=e,
                            latent2_epochs=e, seeds=s, collapse_betas=c)
                    for p, e, s, c in zip(PROFILE_NAMES, (1, 3, 8, 15, 8), (2, 1, 3, 3, 2),
                                          ([1000.0], [1000.0], [50.0, 200.0, 1000.0], [50.0, 200.0, 1000.0],
                                           [50.0, 200.0, 1000.0]))},
    # the basic tier's budget, so that the 0 % model *is* its BCE run (one cache entry, its seeds included); seeds:
    # of the 0 % model, other_seeds: of each noisy one. denoise_amounts: a denoising VAE (noisy input, clean target)
    # per level, the fair test of "cleans images"
    "05_noisy_data": {p: dict(_V[p], noise_amounts=a, denoise_amounts=d, epochs=e, seeds=s, other_seeds=o)
                      for p, a, d, e, s, o in zip(
                          PROFILE_NAMES, ([0.0, 0.1, 0.8], [0.0, 0.1, 0.8]) + ([0.0, 0.01, 0.1, 0.2, 0.8],) * 3,
                          ([0.8], [0.1], [0.1, 0.8], [0.1, 0.8], [0.1, 0.8]), (1, 3, 5, 250, 5), (2, 1, 3, 3, 2),
                          (1, 1, 1, 3, 1))},
}
ALWAYS = dict(seed=0, device="auto", precision="auto", output_dir="report/lab")
NONE_MEANS_ALL = {"train_subset": int, "test_subset": int}  # None = every image of the split

# Sizes that bound the parameters (checked before any training, rather than failing after it).
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000  # MNIST's splits
# the validation split that chooses hyperparameters (tools/choose_*.py, match_rate.py): the last 5,000 training
# images; a candidate trains on the 55,000 before them, never on the test set
VALIDATION_IMAGES = 5_000
FID_FEATURES = 128  # the classifier's penultimate features, to which the FID fits a Gaussian
# lib's torch generators get seed * 1_000_003 + epoch + 500_000 (train.epoch_generators): far below 2**64 here
SEED_MAX = 2**32 - 1


class ParameterError(ValueError):
    """A notebook parameter has a value outside its allowed set."""


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ParameterError(f"parameter {name!r} = {value!r} is invalid: allowed {allowed}")


def _ints(lo: int, hi: int, why: str) -> tuple:
    return int, lambda v: lo <= v <= hi, f"an integer in [{lo}, {hi}] ({why})"


def _choice(options, allowed: str = "one of") -> tuple:
    return str, lambda v: v in tuple(options), f"{allowed} {list(options)}"


_K = _ints(1, 100_000, "importance samples per image; more does not fit in memory")
_RUN = "10000 bounds a run's time and history"
_SEEDS = _ints(1, 100, "each training seed trains one model per arm")
_IMAGES = _ints(2, TEST_IMAGES, f"a standard error needs two images; there are {TEST_IMAGES} test images")
# name: (shape, type, test, allowed values). shape: "" one value, "?" one value or None, "[]" a list, "[+]" a
# non-empty list, "{}" a dict loss name -> value. Numbers must be finite; text numbers are read as numbers.
SCHEMA: dict[str, tuple] = {
    "seed": ("", *_ints(0, SEED_MAX, "NumPy's global seed takes 32 bits")),
    "train_subset": ("?", *_ints(1, TRAIN_IMAGES, f"the training split has {TRAIN_IMAGES} images; None takes all")),
    "test_subset": ("?", *_ints(FID_FEATURES + 1, TEST_IMAGES, "the FID's reference Gaussian, fitted to the test "
                                f"images, needs more of them than its {FID_FEATURES} dimensions; None takes all")),
    "n_samples": ("", *_ints(FID_FEATURES + 1, 100_000, f"the FID's Gaussian needs more samples than its "
                             f"{FID_FEATURES} dimensions; more overflow memory")),
    "iwae_k": ("", *_K), "iwae_ks": ("[+]", *_K), "iwae_images": ("", *_IMAGES), "binarised_k": ("", *_K),
    "binarised_images": ("", *_IMAGES),
    "mc_samples": ("", *_ints(1000, 10_000_000, "a mean is compared with its standard error; more overflow memory")),
    "epochs": ("", *_ints(1, 10_000, f"the course report trained at most 300 epochs; {_RUN}")),
    "vae_epochs": ("", *_ints(1, 10_000, f"the basic tier's epochs; {_RUN}")),
    "ablation_epochs": ("", *_ints(0, 10_000, f"0 skips the no-KL runs; {_RUN}")),
    "latent2_epochs": ("", *_ints(0, 10_000, f"0 skips the 2-d run; {_RUN}")),
    "batch_size": ("", *_ints(1, TRAIN_IMAGES, f"a batch holds at most the {TRAIN_IMAGES} training images")),
    "latent_dim": ("", *_ints(1, 1024, "3 x 6,272 ConvVAE weights per latent dimension: 1024 keeps it under 80 MB")),
    "seeds": ("", *_SEEDS), "other_seeds": ("", *_SEEDS),
    "lr": ("", float, lambda v: v > 0, "a finite number > 0"),
    "adam_beta2": ("", float, lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.99 or the course report's 0.999"),
    "betas": ("[+]", float, lambda v: v >= 0, "numbers >= 0 (beta weights the KL term)"),
    "collapse_betas": ("[]", float, lambda v: v > 0, "numbers > 0 (empty skips the collapse runs)"),
    "noise_amounts": ("[+]", float, lambda v: 0 <= v <= 1, "numbers in [0, 1]"),
    "denoise_amounts": ("[]", float, lambda v: 0 < v < 1, "numbers in (0, 1), the noise a denoising VAE removes"),
    "losses": ("[+]", *_choice(sorted(RECON_LOSSES), "loss names from")),
    "recon": ("", *_choice(sorted(RECON_LOSSES), "loss names from")),
    "matched_weights": ("{}", float, lambda v: v > 0, "finite weights > 0"),
    "lr_schedule": ("", *_choice(LR_SCHEDULES)), "precision": ("", *_choice(("auto", "fp32", "bf16"))),
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
    """Check every parameter in ``cfg`` against SCHEMA, then the rules that tie two together; raise ParameterError
    naming the parameter and the allowed values. Values that would fail only after training (too few samples for a
    statistic, too many for memory, a seed NumPy rejects, a subset larger than its split) are refused here too."""
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
                _fail(name, v, f"a dict of loss name -> weight ({{}} skips), names from {names} (BCE is the reference "
                               f"rate), {allowed}{bad[0] if bad else ''}")
        elif not _ok(typ, test, v):
            _fail(name, v, ("None or " if shape == "?" else "") + allowed)
    for name in ("seeds", "other_seeds"):
        if name in cfg and cfg.get("seed", 0) + cfg[name] - 1 > SEED_MAX:
            _fail(name, cfg[name], f"a count that keeps seed + {name} - 1 <= {SEED_MAX} (seed = {cfg.get('seed', 0)})")
    if "iwae_ks" in cfg and len(set(cfg["iwae_ks"]) | ({cfg.get("iwae_k")} - {None})) < 2:
        _fail("iwae_ks", cfg["iwae_ks"], f"at least two different k counting iwae_k = {cfg.get('iwae_k')} "
                                         "(the IWAE curve compares the bound across k)")
    if notebook == "03_gan" and "batch_size" in cfg:  # the generator's BatchNorm1d needs >= 2 images in every batch
        n, bs = cfg.get("train_subset") or TRAIN_IMAGES, cfg["batch_size"]
        if n - bs * ((n - 1) // bs) == 1:  # the last batch (of ceil(n / bs)) holds one image
            name, value = ("train_subset", n) if n == 1 else ("batch_size", bs)
            _fail(name, value, f"values whose batches all hold >= 2 images (the GAN's BatchNorm needs two); "
                               f"{n} training images in batches of {bs} leave a last batch of 1 image")


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU. 'cuda' without a GPU is an error. 'mps' (an Apple GPU) only when
    asked for by name: it runs the notebooks, but not bit-for-bit as the CPU or CUDA do."""
    if device == "cpu" or device == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device == "mps":
        if not torch.backends.mps.is_available():
            _fail("device", device, "'auto', 'cpu' or 'cuda' / 'cuda:N' (no Apple MPS GPU is available here)")
        return torch.device("mps")
    if device != "auto" and not (isinstance(device, str) and device.startswith("cuda")):
        _fail("device", device, "'auto', 'cpu', 'cuda' / 'cuda:N' or 'mps'")
    if not torch.cuda.is_available():
        _fail("device", device, "'auto' or 'cpu' (no CUDA GPU is available here)")
    deterministic_cuda()
    return torch.device("cuda" if device == "auto" else device)


def deterministic_cuda() -> None:
    """Make CUDA runs bit-reproducible, as CPU runs are: without this, cuDNN's autotuned / atomic-add kernels made two
    smoke runs of 04_beta_vae on an H200 differ in the 6th digit. torch's deterministic kernels warn, not fail, where
    none exists; cuBLAS reads its workspace variable at its first call (device resolution comes first in every
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


def parameter_names(notebook: str) -> list[str]:
    """Every parameter ``notebook`` takes: its profile keys, the shared ones, and ``profile``."""
    if notebook not in PROFILES:
        _fail("notebook", notebook, f"one of {list(NOTEBOOKS)}")
    return sorted({*PROFILES[notebook]["default"], *_COMMON["default"], *ALWAYS, "profile"})


def resolve(notebook: str, profile: str = "default", **explicit: Any) -> dict[str, Any]:
    """Profile values, overridden by explicit (non-None) parameters, validated. Under a profile other than default, a
    value left equal to the default profile's (the parameters cell's literal) takes the profile's: ``profile =
    "smoke"`` shrinks what was not changed. ``device`` becomes a torch.device, ``output_dir`` a writable Path."""
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
            cfg[k] = value
    cfg["profile"] = profile
    validate(cfg, notebook)
    cfg["device"] = resolve_device(cfg["device"])
    cfg["precision"] = resolve_precision(cfg["precision"], cfg["device"])
    path, cfg["output_dir"] = cfg["output_dir"], ROOT / cfg["output_dir"]  # an absolute path stays as it is
    try:
        cfg["output_dir"].mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=cfg["output_dir"]).close()
    except OSError as e:
        raise ParameterError(f"parameter 'output_dir' = {str(path)!r} is invalid: it cannot be written ({e}); "
                             "allowed: a writable folder") from None
    return cfg


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators (the lib itself uses explicit Generators)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads() -> int:
    """Use every core for intra-op work, unless OMP_NUM_THREADS caps them (torch then follows it already)."""
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(os.cpu_count() or 1)
    return torch.get_num_threads()
