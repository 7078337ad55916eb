"""Profiles, parameter validation, seeding and device choice — one place for all notebooks.

A notebook's parameters cell holds literals; ``None`` means "take the profile's value". The
next cell calls ``lib.notebook.setup``, which calls ``resolve(notebook, profile, **params)``: explicit
values merged over the profile and validated *before* any training starts.
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
PROFILE_NAMES = ("smoke", "quick", "default", "full")

# Shared by every notebook; per-notebook tables below override.
_COMMON = {
    # smoke's n_samples: the smallest round count above FID_FEATURES (see validate)
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
}

# The ConvVAE tiers (01, 02, 05): the course report's batch, latent size and Adam, but with the learning rate
# decayed along a cosine over the run. The course report kept 1e-3 constant for 250-300 epochs; a short run
# gets more from a larger start that decays to zero. Chosen on a validation split, never on the test set:
# tools/choose_lr.py (numbers in bench/lr_choice.json). lr_schedule="constant", lr=1e-3 is the course report's choice.
# adam_beta2: Adam's second-moment decay; 0.99 instead of torch's (and the course report's) 0.999, chosen on the same
# validation split by tools/choose_adam.py (bench/adam_choice.json), after the learning rate.
_VAE = dict(batch_size=64, lr=3e-3, lr_schedule="cosine", adam_beta2=0.99, latent_dim=32, recon="bce")
MATCHED_WEIGHTS = {"mse": 3.1, "l1": 1.75}  # tools/match_rate.py, bench/rate_match.json

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "01_vae_basic": {
        # seeds: training seeds of the BCE model; other_seeds: of the MSE and L1 models (two or more, so each
        # compared arm has a seed spread of its own); the no-KL and matched-rate models train the first seed
        # only (lib.claims judges a one-seed arm by its own rule). Ablations train as long as the models.
        # matched_weights: the reconstruction weight per loss whose model has the BCE model's rate (KL),
        # chosen on training images by tools/match_rate.py for the default profile (bench/rate_match.json);
        # full reuses them and its notebook checks whether the rates still agree. {} skips the comparison.
        "smoke": dict(_VAE, losses=["bce", "mse", "l1"], epochs=1, ablation_epochs=1, seeds=2, other_seeds=1,
                      matched_weights={"mse": 10.0, "l1": 3.0}),
        "quick": dict(_VAE, losses=["bce", "mse", "l1"], epochs=3, ablation_epochs=3, seeds=1, other_seeds=1,
                      matched_weights={}),
        "default": dict(_VAE, losses=["bce", "mse", "l1"], epochs=5, ablation_epochs=5, seeds=3,
                        other_seeds=2, matched_weights=dict(MATCHED_WEIGHTS)),
        "full": dict(_VAE, losses=["bce", "mse", "l1"], epochs=250, ablation_epochs=250, seeds=3,
                     other_seeds=3, matched_weights=dict(MATCHED_WEIGHTS)),
    },
    # The derivation reuses the basic tier's BCE model (same spec -> same cached run).
    "02_vae_derivation": {
        # binarised_k / binarised_images: the IWAE bound on dynamically binarised test digits, the number the
        # literature reports (Burda et al. 2016 use k = 5000 on all 10,000)
        "smoke": dict(_VAE, epochs=1, iwae_ks=[1, 2, 5], mc_samples=2000, binarised_k=5, binarised_images=32),
        "quick": dict(_VAE, epochs=3, iwae_ks=[1, 5, 25], mc_samples=10_000, binarised_k=50, binarised_images=200),
        "default": dict(_VAE, epochs=5, iwae_ks=[1, 5, 25, 100], mc_samples=100_000, binarised_k=500,
                        binarised_images=1000),
        "full": dict(_VAE, epochs=250, iwae_ks=[1, 10, 100, 1000], mc_samples=1_000_000, binarised_k=5000,
                     binarised_images=10_000),
    },
    "03_gan": {
        # seeds: training seeds of the GAN; the VAE it is compared with brings the basic tier's BCE seeds
        "smoke": dict(batch_size=64, lr=1e-3, latent_dim=100, epochs=1, seeds=2),
        "quick": dict(batch_size=64, lr=1e-3, latent_dim=100, epochs=5, seeds=1),
        "default": dict(batch_size=64, lr=1e-3, latent_dim=100, epochs=20, seeds=3),
        "full": dict(batch_size=64, lr=1e-3, latent_dim=100, epochs=200, seeds=3),
    },
    "04_beta_vae": {
        # collapse_betas: large β, where the posterior collapses and "superimposed digits" can arise
        "smoke": dict(batch_size=64, lr=1e-3, latent_dim=10, betas=[1.0, 2.0, 3.0, 4.0], epochs=1,
                      latent2_epochs=1, seeds=2, collapse_betas=[1000.0]),
        "quick": dict(batch_size=64, lr=1e-3, latent_dim=10, betas=[1.0, 2.0, 3.0, 4.0], epochs=3,
                      latent2_epochs=3, seeds=1, collapse_betas=[1000.0]),
        "default": dict(batch_size=64, lr=1e-3, latent_dim=10, betas=[1.0, 2.0, 3.0, 4.0], epochs=8,
                        latent2_epochs=8, seeds=3, collapse_betas=[50.0, 200.0, 1000.0]),
        "full": dict(batch_size=64, lr=1e-3, latent_dim=10, betas=[1.0, 2.0, 3.0, 4.0], epochs=15,
                     latent2_epochs=15, seeds=3, collapse_betas=[50.0, 200.0, 1000.0]),
    },
    "05_noisy_data": {
        # The same budget as the basic tier, so that the 0 % model *is* its BCE run (same spec, one cache
        # entry, its seeds included); seeds: of the 0 % model, other_seeds: of each noisy one.
        # denoise_amounts: a denoising VAE (noisy input, clean target) per level, the fair test of "cleans images"
        "smoke": dict(_VAE, noise_amounts=[0.0, 0.1, 0.8], denoise_amounts=[0.8], epochs=1, seeds=2, other_seeds=1),
        "quick": dict(_VAE, noise_amounts=[0.0, 0.1, 0.8], denoise_amounts=[0.1], epochs=3, seeds=1, other_seeds=1),
        "default": dict(_VAE, noise_amounts=[0.0, 0.01, 0.1, 0.2, 0.8], denoise_amounts=[0.1, 0.8], epochs=5, seeds=3,
                        other_seeds=1),
        "full": dict(_VAE, noise_amounts=[0.0, 0.01, 0.1, 0.2, 0.8], denoise_amounts=[0.1, 0.8], epochs=250, seeds=3,
                     other_seeds=3),
    },
}

def model_epochs(profile: str) -> dict[str, int]:
    """Training work of a whole ``make report`` in ``profile``: model-epochs per model family, counted as the
    notebooks train them (runs shared between notebooks, such as 01's BCE model in 02, 03 and 05, counted once).
    What the build's time estimate multiplies by a measured rate (tools/cuda_check.py, make bench)."""
    b, g, n = PROFILES["01_vae_basic"][profile], PROFILES["03_gan"][profile], PROFILES["05_noisy_data"][profile]
    beta = PROFILES["04_beta_vae"][profile]
    conv = (b["seeds"] + (len(b["losses"]) - 1) * b["other_seeds"]) * b["epochs"]  # the three losses
    conv += b["ablation_epochs"] + len(b["matched_weights"]) * b["epochs"]  # one training seed each
    conv += (sum(1 for a in n["noise_amounts"] if a > 0) * n["other_seeds"] + len(n["denoise_amounts"])) * n["epochs"]
    betavae = (len(beta["betas"]) * beta["seeds"] + len(beta["collapse_betas"])) * beta["epochs"]
    return {"ConvVAE": conv, "GAN": g["seeds"] * g["epochs"], "BetaVAE": betavae + beta["latent2_epochs"]}


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
        _fail(name, v, f"a non-empty list (papermill's -p passes text: use -y \"{name}: [1, 8]\"; make report "
                       f"reads P='-p {name} [1,8]' itself)")


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


# Sizes that bound the parameters (checked here, before any training, rather than failing after it).
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000  # MNIST's splits (lib.data checks their files)
# the validation split that chooses hyperparameters (tools/choose_lr.py, match_rate.py, choose_batch.py): the
# last 5,000 training images; a candidate trains on the 55,000 before them, never on the test set
VALIDATION_IMAGES = 5_000
FID_FEATURES = 128  # the classifier's penultimate features, to which the FID fits a Gaussian
SEED_MAX = 2**32 - 1  # NumPy's global seed (seed_everything) takes 32 bits; lib's torch generators get
# seed * 1_000_003 + epoch + 500_000 (train.epoch_generators), which stays far below torch's 2**64 for such seeds
# name: (smallest, largest, why); checked by validate for every notebook that has the parameter
RANGES: dict[str, tuple[int, int, str]] = {
    "n_samples": (FID_FEATURES + 1, 100_000,
                  f"the FID fits a Gaussian to the classifier's {FID_FEATURES}-d features, which needs more samples "
                  f"than dimensions; at most 100000 keeps the samples in memory"),
    "iwae_k": (1, 100_000, "importance samples per image; more does not fit in memory"),
    "iwae_images": (2, TEST_IMAGES, "a standard error over the images needs two of them; there are "
                                    f"{TEST_IMAGES} test images"),
    "binarised_k": (1, 100_000, "importance samples per image; more does not fit in memory"),
    "binarised_images": (2, TEST_IMAGES, f"a standard error needs two images; there are {TEST_IMAGES} test images"),
    "mc_samples": (1000, 10_000_000, "the Monte-Carlo checks compare a mean with its standard error, which "
                                     "needs enough draws to be estimated itself; more does not fit in memory"),
    "seed": (0, SEED_MAX, "NumPy's global seed takes 32 bits"),
    "epochs": (1, 10_000, "the course report trained at most 300 epochs; 10000 bounds a run's time and history"),
    "ablation_epochs": (0, 10_000, "0 skips the no-KL runs; 10000 bounds a run's time and history"),
    "latent2_epochs": (0, 10_000, "0 skips the 2-d run; 10000 bounds a run's time and history"),
    "batch_size": (1, TRAIN_IMAGES, f"a batch holds at most the {TRAIN_IMAGES} training images"),
    "latent_dim": (1, 1024, "the ConvVAE gives each latent dimension 3 x 6,272 weights; 1024 keeps a model "
                            "under 80 MB"),
    "seeds": (1, 100, "each training seed trains one model per arm"),
    "other_seeds": (1, 100, "each training seed trains one model per arm"),
    "train_subset": (1, TRAIN_IMAGES, f"the training split has {TRAIN_IMAGES} images; None takes all of them"),
    "test_subset": (FID_FEATURES + 1, TEST_IMAGES,
                    f"the FID's reference Gaussian is fitted to the test images, which needs more of them than "
                    f"its {FID_FEATURES} dimensions; the test split has {TEST_IMAGES} images; None takes all"),
}
GAN_NOTEBOOKS = ("03_gan",)  # train a GAN, whose generator's BatchNorm1d needs >= 2 images in every batch


def _in_range(name, v):
    lo, hi, why = RANGES[name]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        none = "None or " if name in ("train_subset", "test_subset") else ""
        _fail(name, v, f"{none}an integer in [{lo}, {hi}] ({why})")


def validate(cfg: dict[str, Any], notebook: str | None = None) -> None:
    """Check every known parameter; raise ParameterError naming it and the allowed values. Values
    that would fail only after training (too few samples for a statistic, too many for memory,
    a seed NumPy rejects, a subset larger than its split) are refused here too."""
    if "collapse_betas" in cfg:
        if not isinstance(cfg["collapse_betas"], (list, tuple)):
            _fail("collapse_betas", cfg["collapse_betas"], "a list (empty skips the collapse runs; with papermill "
                                                           "use -y \"collapse_betas: [50, 200]\")")
        for b in cfg["collapse_betas"]:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0:
                _fail("collapse_betas", b, "numbers > 0")
    for name in RANGES:
        if name in cfg and not (name in ("train_subset", "test_subset") and cfg[name] is None):
            _in_range(name, cfg[name])
    for name in ("seeds", "other_seeds"):  # after 'seed' itself is known to be in range
        if name in cfg:
            if cfg.get("seed", 0) + cfg[name] - 1 > SEED_MAX:
                _fail(name, cfg[name], f"a count that keeps seed + {name} - 1 <= {SEED_MAX} (seed = {cfg.get('seed', 0)})")
    if "lr" in cfg:
        _pos_float("lr", cfg["lr"])
    if "adam_beta2" in cfg:
        b2 = cfg["adam_beta2"]
        if isinstance(b2, bool) or not isinstance(b2, (int, float)) or not 0.0 < float(b2) < 1.0:
            _fail("adam_beta2", b2, "a number in (0, 1), e.g. 0.99 (the profiles) or 0.999 (the course report's)")
    for name in ("losses", "recon"):
        if name in cfg:
            names = cfg[name] if name == "losses" else [cfg[name]]
            if name == "losses":
                _nonempty_list(name, names)
            for n in names:
                if n not in RECON_LOSSES:
                    _fail(name, n, f"loss names from {sorted(RECON_LOSSES)}")
    if "matched_weights" in cfg:
        mw, others = cfg["matched_weights"], sorted(set(RECON_LOSSES) - {"bce"})
        if not isinstance(mw, dict):
            _fail("matched_weights", mw, f"a dict of loss name -> weight, names from {others} ({{}} skips)")
        for name, w in mw.items():
            if name not in others:
                _fail("matched_weights", mw, f"loss names from {others} (BCE is the reference rate)")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
                _fail("matched_weights", mw, f"finite weights > 0 ({name!r} has {w!r})")
    if "betas" in cfg:
        _nonempty_list("betas", cfg["betas"])
        for b in cfg["betas"]:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
                _fail("betas", b, "numbers >= 0 (beta weights the KL term)")
    if "noise_amounts" in cfg:
        _nonempty_list("noise_amounts", cfg["noise_amounts"])
        for a in cfg["noise_amounts"]:
            _fraction("noise_amounts", a)
    if "denoise_amounts" in cfg:
        if not isinstance(cfg["denoise_amounts"], (list, tuple)):
            _fail("denoise_amounts", cfg["denoise_amounts"], "a list of noise fractions in (0, 1), e.g. [0.1, 0.8] ([] skips them)")
        for a in cfg["denoise_amounts"]:
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 < float(a) < 1.0:
                _fail("denoise_amounts", a, "a number in (0, 1): the noise a denoising VAE removes")
    if "iwae_ks" in cfg:
        _nonempty_list("iwae_ks", cfg["iwae_ks"])
        for k in cfg["iwae_ks"]:
            _int_ge("iwae_ks", k, 1)
            if k > RANGES["iwae_k"][1]:
                _fail("iwae_ks", k, f"integers in [1, {RANGES['iwae_k'][1]}] ({RANGES['iwae_k'][2]})")
        if len(set(cfg["iwae_ks"]) | ({cfg.get("iwae_k")} - {None})) < 2:
            _fail("iwae_ks", cfg["iwae_ks"], f"at least two different k counting iwae_k = {cfg.get('iwae_k')} "
                                             "(the IWAE curve compares the bound across k)")
    if "lr_schedule" in cfg and cfg["lr_schedule"] not in LR_SCHEDULES:
        _fail("lr_schedule", cfg["lr_schedule"], f"one of {list(LR_SCHEDULES)}")
    if "precision" in cfg and cfg["precision"] not in PRECISIONS:
        _fail("precision", cfg["precision"], f"one of {list(PRECISIONS)}")
    if "classifier" in cfg and cfg["classifier"] not in ("smoke", "full"):
        _fail("classifier", cfg["classifier"], "'smoke' or 'full'")
    if notebook in GAN_NOTEBOOKS and "batch_size" in cfg:
        n, bs = cfg.get("train_subset") or TRAIN_IMAGES, cfg["batch_size"]
        if n - bs * ((n - 1) // bs) == 1:  # the last batch (of ceil(n / bs)) holds one image
            name, value = ("train_subset", n) if n == 1 else ("batch_size", bs)
            _fail(name, value, f"values whose batches all hold >= 2 images (the GAN's BatchNorm needs two); "
                               f"{n} training images in batches of {bs} leave a last batch of 1 image")


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _coerce(value: Any, like: Any) -> Any:
    """A number written as text (YAML 1.1, which papermill's and make report's ``-p`` use, reads
    ``1e-3`` as the string '1e-3') becomes the number, when the profile's value is a number or a
    list of numbers; anything else is left for ``validate`` to judge."""
    if isinstance(value, (list, tuple)) and isinstance(like, (list, tuple)) and like:
        return [_coerce(v, like[0]) for v in value]
    if isinstance(value, dict) and isinstance(like, dict) and like:
        return {k: _coerce(v, next(iter(like.values()))) for k, v in value.items()}
    if isinstance(value, str) and (like is int or isinstance(like, (int, float)) and not isinstance(like, bool)):
        if _NUMBER.fullmatch(value.strip()):
            number = float(value)
            return int(number) if (like is int or isinstance(like, int)) and number.is_integer() else number
    return value


# The type of a parameter whose profile value is None (None = "all"), for _coerce.
NONE_MEANS_ALL = {"train_subset": int, "test_subset": int}


def parameter_names(notebook: str) -> list[str]:
    """Every parameter ``notebook`` takes: its profile keys, the shared ones, and ``profile``."""
    if notebook not in PROFILES:
        _fail("notebook", notebook, f"one of {list(NOTEBOOKS)}")
    names = set(PROFILES[notebook]["default"]) | set(_COMMON["default"]) | set(ALWAYS) | {"profile"}
    return sorted(names)


def resolve(notebook: str, profile: str = "default", **explicit: Any) -> dict[str, Any]:
    """Profile values, overridden by explicit (non-None) parameters, validated. The notebooks' parameters
    cells hold the default profile's values as literals: under another profile, a value left equal to the
    default profile's takes that profile's value (``profile = "smoke"`` shrinks what was not changed).

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
    default = {**ALWAYS, **_COMMON["default"], **PROFILES[notebook]["default"]}
    for k, v in explicit.items():
        if v is None or k == "profile":
            continue
        value = _coerce(v, NONE_MEANS_ALL.get(k) if cfg.get(k) is None else cfg[k])
        if profile == "default" or k not in default or value != default[k]:  # left at the default: the profile's
            cfg[k] = value
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
