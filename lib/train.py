"""One training loop with load-or-train, and the step functions the model families plug into it.

A run is described by a ``RunSpec``; its ``run_id`` hashes the spec, the dataset checksums and
the code of every lib module that changes a result (``store.RESULT_SOURCES``; comments and
docstrings left out), so a code or parameter change never reuses a stale model, and editing prose
retrains nothing. ``fit`` writes a checkpoint atomically after every epoch; rerunning a killed run
resumes from the last epoch and, because each epoch's randomness comes from a generator seeded
by (seed, epoch), reaches the same numbers as an uninterrupted run.

A model family contributes only its step function: ``vae_step`` (one Adam step on the negative
ELBO) or ``gan_step`` (``g_step`` then ``d_step``). ``make bench`` times ``vae_step`` as ``fit`` calls it.

Seed bugs fixed here: the seed trained on the 10,000 *test* images (``train=False``) — we train
on the 60,000-image training split and evaluate on the test split every epoch; its "average
loss" divided a total that accumulated across epochs — we reset it every epoch; the GAN zeroed
the discriminator's gradients *before* ``g_loss.backward()``, so the generator's loss leaked
into the discriminator's update — ``d_step`` clears them first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import data, losses, models, noise
from .bounds import test_bound
from .config import LR_SCHEDULES
from .data import generator
from .progress import progress
from .store import CACHE, checkpoint_path, exclusive, load_checkpoint, save_checkpoint, source_hash

GRID = 64  # images in the per-epoch sample grid (fixed z)
# A run has diverged when the epoch mean of a logged training term exceeds this in absolute value (per
# image: a VAE's loss is ~1e2 nats, the GAN's BCE losses ~1, its D outputs in [0, 1]). The row is
# marked ``"diverged": True`` and a warning names the run, epoch, term and value; nothing else changes.
DIVERGED = 1e6
MODEL_NAMES = ("ConvVAE", "BetaVAE", "GAN")


class TrainingError(RuntimeError):
    """Training produced a non-finite loss."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that changes a trained model. ``tag`` is a readable prefix of the run id."""

    tag: str
    model: str = "ConvVAE"  # ConvVAE | BetaVAE | GAN
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (per step, from lr down to 0 at the last step)
    latent_dim: int = 32
    seed: int = 0
    recon: str = "bce"
    beta: float = 1.0
    recon_weight: float = 1.0
    noise_amount: float = 0.0
    train_subset: int | None = None
    test_subset: int | None = None
    adam_betas: tuple[float, float] = (0.9, 0.999)
    precision: str = "fp32"  # fp32 | bf16 (autocast for the network; losses always in fp32)

    def key(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @property
    def run_id(self) -> str:
        blob = json.dumps({"spec": self.key(), "data": data.data_fingerprint(), "code": source_hash()}, sort_keys=True)
        return f"{self.tag}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


@dataclass
class Run:
    spec: RunSpec
    model: torch.nn.Module  # the VAE, or the GAN's generator
    history: list[dict[str, float]]
    grids: torch.Tensor  # uint8 [epochs, GRID, 28, 28]: samples from one fixed z after each epoch
    discriminator: torch.nn.Module | None = None
    resumed_from: int = 0
    trained_epochs: int = 0  # epochs trained in this call (0 = loaded from the cache)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.spec.run_id


# --- speed: library switches, all in this one place ---------------------------------------
# make bench measures each of them against the plain path (bench/README.md has the numbers).

def autocast(precision: str, device: torch.device):
    """bf16 autocast of the network when ``precision`` is 'bf16' (chosen by config.resolve_precision
    where the hardware runs bf16 natively); a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_layout(model: torch.nn.Module) -> torch.nn.Module:
    """The VAEs' conv weights in channels_last, so that oneDNN skips a layout reorder around each
    convolution; the GAN gains nothing from it and stays in the default layout (make bench)."""
    return model.to(memory_format=torch.channels_last)


def adam(params, spec: RunSpec) -> torch.optim.Adam:
    """Adam as the seed configured it; ``fused``: the same update in one kernel per step."""
    return torch.optim.Adam(params, lr=spec.lr, betas=spec.adam_betas, fused=True)


# --- data and schedule --------------------------------------------------------------------

def run_data(spec: RunSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, test_x, clean_train_x, clean_test_x) as float tensors on ``device``.

    With ``noise_amount > 0`` the inputs *and* targets are the salt-and-pepper images (the model
    only ever sees noisy data, as in the seed); the noise is drawn once from the run's seed."""
    train = data.subset(data.load_split("train").float_images(device), spec.train_subset)
    test = data.subset(data.load_split("test").float_images(device), spec.test_subset)
    if spec.noise_amount > 0:
        noisy_train = noise.salt_and_pepper(train, spec.noise_amount, generator=generator(spec.seed + 1))
        noisy_test = noise.salt_and_pepper(test, spec.noise_amount, generator=generator(spec.seed + 2))
        return noisy_train, noisy_test, train, test
    return train, test, train, test


def lr_at(spec: RunSpec, step: int, total_steps: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``: constant, or a
    cosine from ``spec.lr`` at step 0 towards 0 at the end. A function of the step index only,
    so a resumed run follows the same schedule."""
    if spec.lr_schedule == "constant":
        return spec.lr
    if spec.lr_schedule == "cosine":
        return spec.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
    raise ValueError(f"lr_schedule {spec.lr_schedule!r} is invalid: allowed one of {list(LR_SCHEDULES)}")


def epoch_generators(spec: RunSpec, epoch: int, device: torch.device):
    """Shuffling (CPU) and model-noise (on device) generators for one epoch: resumable exactly."""
    s = spec.seed * 1_000_003 + epoch
    return generator(s), generator(s + 500_000, device)


# --- the step functions -------------------------------------------------------------------

def vae_step(model, opt, x, recon="bce", beta=1.0, recon_weight=1.0, generator=None, precision="fp32"):
    """One Adam step on the negative (β-)ELBO of batch x; returns ELBOTerms (loss computed in fp32)."""
    with autocast(precision, x.device):
        x_logits, mu, logvar = model(x, generator=generator)
    # fp32 loss: summing 784 pixel terms in bf16 would round a ~100-nat loss to about 1 nat
    terms = losses.elbo(x_logits.float(), x, mu.float(), logvar.float(), recon, beta, recon_weight)
    opt.zero_grad(set_to_none=True)
    terms.loss.backward()
    opt.step()
    return terms


def g_step(G, D, opt_g, z) -> tuple[torch.Tensor, torch.Tensor]:
    """One generator update: make D call G(z) real. Returns (loss, fake images)."""
    fake = G(z)
    loss = losses.g_loss(D(fake))
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    return loss.detach(), fake


def d_step(D, opt_d, real, fake) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One discriminator update. Returns (loss, mean D(x), mean D(G(z)))."""
    opt_d.zero_grad(set_to_none=True)  # clears the grads g_step's backward left in D (seed bug)
    real_logits = D(real)
    fake_logits = D(fake.detach())  # detach: D's loss must not update G
    loss = losses.d_loss(real_logits, fake_logits)
    loss.backward()
    opt_d.step()
    return loss.detach(), torch.sigmoid(real_logits).mean().detach(), torch.sigmoid(fake_logits).mean().detach()


def gan_step(G, D, opt_g, opt_d, real, z, precision="fp32") -> tuple[torch.Tensor, ...]:
    """One generator step then one discriminator step on the batch ``real`` (images in [-1, 1]).
    Returns (g_loss, d_loss, mean D(x), mean D(G(z))); autocast keeps the BCE losses in fp32."""
    with autocast(precision, real.device):
        gl, fake = g_step(G, D, opt_g, z)
        dl, d_real, d_fake = d_step(D, opt_d, real, fake)
    return gl, dl, d_real, d_fake


# --- model families: what differs between a VAE run and a GAN run -------------------------

@dataclass
class Family:
    """The parts of one run and how to step and score them; ``fit`` does the rest."""

    parts: dict[str, Any]  # name -> module or optimiser: everything a checkpoint holds
    sampler: torch.nn.Module  # the network that decodes the fixed grid z
    step: Callable[[torch.Tensor, torch.Generator], dict[str, torch.Tensor]]  # batch, noise -> logged terms
    inputs: Callable[[torch.Tensor], torch.Tensor]  # training images in [0, 1] -> what step() takes
    scores: Callable[[torch.Tensor], dict[str, float]]  # test images -> per-epoch test metrics


def seeded_init(build: Callable[[], Any], seed: int):
    """``build()`` with torch's global generator seeded by ``seed`` (weight init flows from the run's
    seed) and restored afterwards, so nothing outside is disturbed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def vae_family(spec: RunSpec, device: torch.device) -> Family:
    cls = {"ConvVAE": models.ConvVAE, "BetaVAE": models.BetaVAE}[spec.model]
    model = memory_layout(seeded_init(lambda: cls(latent_dim=spec.latent_dim), spec.seed).to(device))
    opt = adam(model.parameters(), spec)

    def step(x, g_noise):
        t = vae_step(model, opt, x, spec.recon, spec.beta, spec.recon_weight, g_noise, spec.precision)
        return {"train_loss": t.loss, "train_recon": t.recon, "train_kl": t.kl}

    def scores(test_x):
        t = test_bound(model, test_x, spec.recon, beta=spec.beta, recon_weight=spec.recon_weight,
                       generator=generator(spec.seed + 4, device))
        return {f"test_{k}": v for k, v in t.items()}

    return Family({"model": model, "opt": opt}, model, step, lambda x: x, scores)


def gan_family(spec: RunSpec, device: torch.device) -> Family:
    G, D = seeded_init(lambda: (models.Generator(spec.latent_dim), models.Discriminator()), spec.seed)
    G, D = G.to(device), D.to(device)
    opt_g, opt_d = adam(G.parameters(), spec), adam(D.parameters(), spec)

    def step(real, g_noise):
        z = torch.randn(len(real), spec.latent_dim, generator=g_noise, device=real.device)
        gl, dl, d_real, d_fake = gan_step(G, D, opt_g, opt_d, real, z, spec.precision)
        return {"g_loss": gl, "d_loss": dl, "d_real": d_real, "d_fake": d_fake}

    # [0, 1] -> [-1, 1], the seed's Normalize([0.5], [0.5]) to match the generator's tanh
    return Family({"G": G, "D": D, "opt_g": opt_g, "opt_d": opt_d}, G, step, lambda x: x * 2 - 1, lambda _: {})


FAMILIES = {"ConvVAE": vae_family, "BetaVAE": vae_family, "GAN": gan_family}


def check_spec(spec: RunSpec) -> None:
    """Unknown model, loss or schedule -> a clear error before any work."""
    if spec.model not in FAMILIES:
        raise ValueError(f"model {spec.model!r} is invalid: allowed one of {list(MODEL_NAMES)}")
    losses.get_recon_loss(spec.recon)
    lr_at(spec, 0, 1)
    if spec.model == "GAN" and spec.lr_schedule != "constant":
        raise ValueError(f"lr_schedule {spec.lr_schedule!r} is not supported for the GAN: allowed 'constant'")


# --- the loop -----------------------------------------------------------------------------

def _check_finite(value: torch.Tensor, run_id: str, epoch: int, batch: int, path: Path) -> None:
    if not torch.isfinite(value):
        last = f"{path} (epoch {epoch - 1})" if path.exists() else "none (no epoch finished yet)"
        raise TrainingError(
            f"run {run_id}: non-finite loss ({value.item()}) at epoch {epoch}, batch {batch}; training stopped. "
            f"Last good checkpoint: {last}. Try a smaller learning rate."
        )


def fit(
    spec: RunSpec,
    device: torch.device | str = "cpu",
    cache: Path = CACHE,
    show_progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> Run:
    """Train (or load, or resume) the run ``spec`` describes for ``spec.epochs`` epochs. After each
    epoch: the per-image means of the logged terms, the family's test scores (VAEs: the test bound),
    a sample grid from one fixed z, and an atomic checkpoint."""
    check_spec(spec)
    # another kernel training this very run (make report's parallel notebooks): wait for it, then load
    with exclusive(checkpoint_path(spec.run_id, cache)):
        return _train_or_load(spec, torch.device(device), cache, show_progress, on_epoch_end)


def _train_or_load(spec: RunSpec, device: torch.device, cache: Path, show_progress: bool,
                   on_epoch_end: Callable[[int, dict], None] | None) -> Run:
    run_id, path = spec.run_id, checkpoint_path(spec.run_id, cache)
    fam = FAMILIES[spec.model](spec, device)
    state = load_checkpoint(path, owner=run_id, keys=(*fam.parts, "history", "grids"))
    history, grids = ([], []) if state is None else (list(state["history"]), list(state["grids"]))
    if state is not None:
        for name, part in fam.parts.items():
            part.load_state_dict(state[name])
    start = len(history)
    fixed_z = torch.randn(GRID, spec.latent_dim, generator=generator(spec.seed + 3)).to(device)

    if start < spec.epochs:
        train_x, test_x, _, _ = run_data(spec, device)
        train_x = fam.inputs(train_x)
        n, bs = len(train_x), spec.batch_size
        n_batches = math.ceil(n / bs)
    for epoch in range(start + 1, spec.epochs + 1):
        g_shuffle, g_noise = epoch_generators(spec, epoch, device)
        for m in fam.parts.values():
            if isinstance(m, torch.nn.Module):
                m.train()
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        batches = data.batches(n, bs, g_shuffle)
        for i, idx in enumerate(progress(batches, n_batches, f"{run_id} epoch {epoch}/{spec.epochs}", show_progress)):
            lr = lr_at(spec, (epoch - 1) * n_batches + i, spec.epochs * n_batches)
            for opt in (p for p in fam.parts.values() if isinstance(p, torch.optim.Optimizer)):
                for group in opt.param_groups:
                    group["lr"] = lr
            terms = fam.step(train_x[idx.to(device)], g_noise)
            _check_finite(sum(t.detach() for t in terms.values()), run_id, epoch, i, path)
            for k, t in terms.items():
                sums[k] = sums.get(k, 0) + t.detach().double() * len(idx)
        row = {"epoch": epoch, **{k: (v / n).item() for k, v in sums.items()},
               "train_seconds": time.perf_counter() - t0}
        if big := {k: row[k] for k in sums if abs(row[k]) > DIVERGED}:
            row["diverged"] = True
            warnings.warn(f"run {run_id} diverged at epoch {epoch}: "
                          + ", ".join(f"{k} = {v:.3g}" for k, v in big.items())
                          + f" per image (|value| > {DIVERGED:g}); its results are not meaningful. "
                          "Try a smaller learning rate.", stacklevel=2)
        for m in fam.parts.values():
            if isinstance(m, torch.nn.Module):
                m.eval()
        row.update(fam.scores(test_x))
        history.append(row)
        grids.append(data.to_uint8(fam.sampler.sample(GRID, z=fixed_z)))
        save_checkpoint(path, {**{name: part.state_dict() for name, part in fam.parts.items()},
                               "history": history, "grids": grids, "run_id": run_id, "spec": spec.key()})
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    if loaded := [row["epoch"] for row in history[:start] if row.get("diverged")]:
        warnings.warn(f"run {run_id} (loaded from its checkpoint) diverged at epoch(s) {loaded}; its results "
                      "are not meaningful. Try a smaller learning rate.", stacklevel=2)
    for m in fam.parts.values():
        if isinstance(m, torch.nn.Module):
            m.eval()
    return Run(spec, fam.sampler, history, torch.stack(grids), discriminator=fam.parts.get("D"),
               resumed_from=start, trained_epochs=spec.epochs - start)


def spec_from(cfg: dict[str, Any], tag: str, model: str = "ConvVAE", **changes: Any) -> RunSpec:
    """The RunSpec a notebook's resolved config describes (same config -> same run id -> cache hit)."""
    base = dict(tag=tag, model=model, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                lr_schedule=cfg.get("lr_schedule", "constant"),
                latent_dim=cfg["latent_dim"], seed=cfg["seed"], train_subset=cfg["train_subset"],
                adam_betas=(0.9, cfg.get("adam_beta2", 0.999)),
                test_subset=cfg["test_subset"],
                # bf16 does not pay for the tiny BetaVAE on a CPU (make bench), so it stays fp32
                precision="fp32" if model == "BetaVAE" else cfg.get("precision", "fp32"))
    return RunSpec(**{**base, **changes})
