"""Training loops with load-or-train: ``fit_vae`` and ``fit_gan``.

Each run is described by a ``RunSpec``; its ``run_id`` hashes the spec, the dataset checksums
and the code of every lib module that changes a result (comments and docstrings left out), so a
code or parameter change never reuses a stale model, and editing prose retrains nothing. A checkpoint is written atomically after every epoch; rerunning a killed
run resumes from the last epoch and, because each epoch's randomness comes from a generator
seeded by (seed, epoch), reaches the same numbers as an uninterrupted run.

Seed bugs fixed here: the seed trained on the 10,000 *test* images (``train=False``) — we train
on the 60,000-image training split and evaluate on the test split every epoch; its "average
loss" divided a total that accumulated across epochs — we reset it every epoch; the GAN zeroed
the discriminator's gradients *before* ``g_loss.backward()``, so the generator's loss leaked
into the discriminator's update — ``d_step`` clears them first.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import data, losses, models, noise
from .config import ROOT, generator

CACHE = Path(os.environ.get("GENMNIST_CACHE", ROOT / "data" / "cache"))
_RESULT_SOURCES = ("data.py", "models.py", "losses.py", "noise.py", "train.py")
GRID = 64  # images in the per-epoch sample grid (fixed z)


class TrainingError(RuntimeError):
    """Training produced a non-finite loss."""


def code_only(source: str) -> str:
    """A module's code without its comments and docstrings (the AST, dumped without line numbers)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree)


def source_hash(files=_RESULT_SOURCES) -> str:
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in files:
        h.update(name.encode())
        h.update(code_only((here / name).read_text(encoding="utf-8")).encode())
    return h.hexdigest()[:16]


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
    model: torch.nn.Module
    history: list[dict[str, float]]
    grids: torch.Tensor  # uint8 [epochs, GRID, 28, 28]: samples from one fixed z after each epoch
    discriminator: torch.nn.Module | None = None
    resumed_from: int = 0
    trained_epochs: int = 0  # epochs trained in this call (0 = loaded from cache)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.spec.run_id


# --- data for a spec ------------------------------------------------------------------------

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


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, 1, 28, 28] floats in [0, 1] -> uint8 [N, 28, 28] on the CPU."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).reshape(-1, 28, 28).cpu()


# --- checkpoints ----------------------------------------------------------------------------

def checkpoint_path(run_id: str, cache: Path = CACHE) -> Path:
    return Path(cache) / run_id / "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file in the same folder, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint's state, or None when absent. A corrupted file is reported and ignored
    (the run is retrained), never crashed on."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means "retrain"
        warnings.warn(f"checkpoint {path} is corrupted ({type(e).__name__}: {e}); retraining this run from scratch")
        return None


def _restore(path: Path, parts: dict[str, Any]) -> tuple[list[dict[str, float]], list[torch.Tensor]]:
    """Load a run's checkpoint into ``parts`` (name -> module or optimiser). Returns the finished
    epochs' (history, grids); both empty when there is no usable checkpoint."""
    state = load_checkpoint(path)
    if state is None:
        return [], []
    for name, part in parts.items():
        part.load_state_dict(state[name])
    return list(state["history"]), list(state["grids"])


def _save(path: Path, parts: dict[str, Any], history: list, grids: list, run_id: str) -> None:
    """Checkpoint after an epoch: every part's state, the history and grids so far (atomic)."""
    save_checkpoint(path, {**{name: part.state_dict() for name, part in parts.items()},
                           "history": history, "grids": grids, "run_id": run_id})


def _progress(iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar (widget in JupyterLab, text in make report's terminal); off in CI logs (CI=true)."""
    if not enabled or os.environ.get("CI"):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, mininterval=1.0, unit="batch")


def _check_finite(value: torch.Tensor, run_id: str, epoch: int, batch: int, path: Path) -> None:
    if not torch.isfinite(value):
        last = f"{path} (epoch {epoch - 1})" if path.exists() else "none (no epoch finished yet)"
        raise TrainingError(
            f"run {run_id}: non-finite loss ({value.item()}) at epoch {epoch}, batch {batch}; training stopped. "
            f"Last good checkpoint: {last}. Try a smaller learning rate."
        )


def _epoch_generators(spec: RunSpec, epoch: int, device: torch.device):
    """Shuffling (CPU) and model noise (on device) generators for one epoch: resumable exactly."""
    s = spec.seed * 1_000_003 + epoch
    return generator(s), generator(s + 500_000, device)


def _autocast(spec: RunSpec, device: torch.device):
    """bf16 autocast when the spec asks for it (make bench: 1.4-2.3x faster on this AVX-512 CPU for ConvVAE
    and the GAN, final losses within seed-to-seed noise); a no-op for fp32."""
    if spec.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_at(spec: RunSpec, step: int, total_steps: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``: constant, or a
    cosine from ``spec.lr`` at step 0 towards 0 at the end. A function of the step index only,
    so a resumed run follows the same schedule."""
    if spec.lr_schedule == "constant":
        return spec.lr
    if spec.lr_schedule == "cosine":
        return spec.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
    raise ValueError(f"lr_schedule {spec.lr_schedule!r} is invalid: allowed 'constant' or 'cosine'")


def prepare_vae(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a VAE to ``device`` in channels_last layout, oneDNN's native layout for convolutions.
    make bench ('lib NCHW' vs 'lib'): +5 % for the ConvVAE, +7 % for the BetaVAE on the machine
    this was built on (channels_last is also the fast layout for bf16 convs on GPUs).
    Values are unchanged up to float rounding; only the memory order differs."""
    return model.to(device=device, memory_format=torch.channels_last)


def as_input(x: torch.Tensor) -> torch.Tensor:
    """A batch in the layout prepare_vae's model expects (a no-op copy-free view for 1 channel)."""
    return x.contiguous(memory_format=torch.channels_last)


def _adam(params, spec: RunSpec):
    # fused Adam: the same update in one kernel per step (make bench: +8-17 % on the small nets)
    return torch.optim.Adam(params, lr=spec.lr, betas=spec.adam_betas, fused=True)


# --- VAE ------------------------------------------------------------------------------------

def vae_step(model, opt, x, recon="bce", beta=1.0, recon_weight=1.0, generator=None, autocast_dtype=None):
    """One Adam step on the negative (β-)ELBO of batch x; returns ELBOTerms (loss computed in fp32)."""
    ctx = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with ctx:
        x_logits, mu, logvar = model(x, generator=generator)
    # fp32 loss: summing 784 pixel terms in bf16 would round a ~100-nat loss to about 1 nat
    terms = losses.elbo(x_logits.float(), x, mu.float(), logvar.float(), recon, beta, recon_weight)
    opt.zero_grad(set_to_none=True)
    terms.loss.backward()
    opt.step()
    return terms


def build_vae(spec: RunSpec) -> models.VAEBase:
    cls = {"ConvVAE": models.ConvVAE, "BetaVAE": models.BetaVAE}.get(spec.model)
    if cls is None:
        raise ValueError(f"model {spec.model!r} is not a VAE; allowed 'ConvVAE' or 'BetaVAE'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)  # weight init flows from the run's seed
        return cls(latent_dim=spec.latent_dim)


def fit_vae(
    spec: RunSpec,
    device: torch.device | str = "cpu",
    cache: Path = CACHE,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> Run:
    """Train (or load, or resume) a VAE for ``spec.epochs`` epochs; evaluate on the test split after each."""
    from .evaluate import test_bound

    device = torch.device(device)
    losses.get_recon_loss(spec.recon)  # unknown loss name -> clear error before any work
    run_id, path = spec.run_id, checkpoint_path(spec.run_id, cache)
    lr_at(spec, 0, 1)  # unknown schedule -> clear error before any work
    model = prepare_vae(build_vae(spec), device)
    opt = _adam(model.parameters(), spec)
    amp = torch.bfloat16 if spec.precision == "bf16" else None
    parts = {"model": model, "opt": opt}
    history, grids = _restore(path, parts)
    start = len(history)
    fixed_z = torch.randn(GRID, spec.latent_dim, generator=generator(spec.seed + 3)).to(device)
    if start >= spec.epochs:
        model.eval()
        return Run(spec, model, history, torch.stack(grids), resumed_from=start)

    train_x, test_x, _, _ = run_data(spec, device)
    n, bs = len(train_x), spec.batch_size
    n_batches = math.ceil(n / bs)
    for epoch in range(start + 1, spec.epochs + 1):
        g_shuffle, g_noise = _epoch_generators(spec, epoch, device)
        model.train()
        t0 = time.perf_counter()
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        batches = data.batches(n, bs, g_shuffle)
        for i, idx in enumerate(_progress(batches, n_batches, f"{run_id} epoch {epoch}/{spec.epochs}", progress)):
            lr = lr_at(spec, (epoch - 1) * n_batches + i, spec.epochs * n_batches)
            for group in opt.param_groups:
                group["lr"] = lr
            x = as_input(train_x[idx.to(device)])
            terms = vae_step(model, opt, x, spec.recon, spec.beta, spec.recon_weight, g_noise, amp)
            _check_finite(terms.loss.detach(), run_id, epoch, i, path)
            sums += torch.stack([t.detach() for t in terms]).double() * len(idx)
        train_seconds = time.perf_counter() - t0
        model.eval()
        test = test_bound(model, test_x, spec.recon, beta=spec.beta, recon_weight=spec.recon_weight,
                          generator=generator(spec.seed + 4, device))
        tr = (sums / n).tolist()  # per-image means over this epoch only (the seed accumulated across epochs)
        row = {"epoch": epoch, "train_loss": tr[0], "train_recon": tr[1], "train_kl": tr[2],
               "test_loss": test["loss"], "test_recon": test["recon"], "test_kl": test["kl"],
               "test_bound": test["bound"], "train_seconds": train_seconds}
        history.append(row)
        grids.append(to_uint8(model.sample(GRID, z=fixed_z)))
        _save(path, parts, history, grids, run_id)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    model.eval()
    return Run(spec, model, history, torch.stack(grids), resumed_from=start, trained_epochs=spec.epochs - start)


# --- GAN ------------------------------------------------------------------------------------

def build_gan(spec: RunSpec) -> tuple[models.Generator, models.Discriminator]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return models.Generator(spec.latent_dim), models.Discriminator()


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


def fit_gan(
    spec: RunSpec,
    device: torch.device | str = "cpu",
    cache: Path = CACHE,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> Run:
    """Train (or load, or resume) the seed's MLP GAN on images scaled to [-1, 1]."""
    device = torch.device(device)
    if spec.lr_schedule != "constant":
        raise ValueError(f"lr_schedule {spec.lr_schedule!r} is not supported for the GAN: allowed 'constant'")
    run_id, path = spec.run_id, checkpoint_path(spec.run_id, cache)
    G, D = build_gan(spec)
    G, D = G.to(device), D.to(device)
    opt_g, opt_d = _adam(G.parameters(), spec), _adam(D.parameters(), spec)
    parts = {"G": G, "D": D, "opt_g": opt_g, "opt_d": opt_d}
    history, grids = _restore(path, parts)
    start = len(history)
    fixed_z = torch.randn(GRID, spec.latent_dim, generator=generator(spec.seed + 3)).to(device)
    if start >= spec.epochs:
        G.eval(), D.eval()
        return Run(spec, G, history, torch.stack(grids), discriminator=D, resumed_from=start)

    train_x, _, _, _ = run_data(spec, device)
    train_x = train_x * 2 - 1  # [0, 1] -> [-1, 1], the seed's Normalize([0.5], [0.5]) to match tanh
    n, bs = len(train_x), spec.batch_size
    n_batches = math.ceil(n / bs)
    for epoch in range(start + 1, spec.epochs + 1):
        g_shuffle, g_noise = _epoch_generators(spec, epoch, device)
        G.train(), D.train()
        t0 = time.perf_counter()
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        batches = data.batches(n, bs, g_shuffle)
        for i, idx in enumerate(_progress(batches, n_batches, f"{run_id} epoch {epoch}/{spec.epochs}", progress)):
            real = train_x[idx.to(device)]
            z = torch.randn(len(idx), spec.latent_dim, generator=g_noise, device=device)
            with _autocast(spec, device):  # the GAN losses are taken in fp32 by autocast itself
                gl, fake = g_step(G, D, opt_g, z)
                dl, d_real, d_fake = d_step(D, opt_d, real, fake)
            _check_finite(gl + dl, run_id, epoch, i, path)
            sums += torch.stack([gl, dl, d_real, d_fake]).double() * len(idx)
        m = (sums / n).tolist()
        row = {"epoch": epoch, "g_loss": m[0], "d_loss": m[1], "d_real": m[2], "d_fake": m[3],
               "train_seconds": time.perf_counter() - t0}
        history.append(row)
        G.eval()
        grids.append(to_uint8(G.sample(GRID, z=fixed_z)))
        _save(path, parts, history, grids, run_id)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    G.eval(), D.eval()
    return Run(spec, G, history, torch.stack(grids), discriminator=D, resumed_from=start,
               trained_epochs=spec.epochs - start)


def fit(spec: RunSpec, **kw) -> Run:
    return fit_gan(spec, **kw) if spec.model == "GAN" else fit_vae(spec, **kw)


def spec_from(cfg: dict[str, Any], tag: str, model: str = "ConvVAE", **changes: Any) -> RunSpec:
    """The RunSpec a notebook's resolved config describes (same config -> same run id -> cache hit)."""
    base = dict(tag=tag, model=model, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                lr_schedule=cfg.get("lr_schedule", "constant"),
                latent_dim=cfg["latent_dim"], seed=cfg["seed"], train_subset=cfg["train_subset"],
                test_subset=cfg["test_subset"],
                # make bench: bf16 is ~16 % *slower* for the tiny BetaVAE, so it stays fp32
                precision="fp32" if model == "BetaVAE" else cfg.get("precision", "fp32"))
    return RunSpec(**{**base, **changes})
