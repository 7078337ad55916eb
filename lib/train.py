"""One training loop with load-or-train, and the step functions the model families plug into it.

A ``RunSpec``'s ``run_id`` hashes the spec, the dataset checksums and the code (not the prose) of the lib modules
that change a result (``store.RESULT_SOURCES``), so no change ever reuses a stale model. ``fit`` checkpoints
atomically after every epoch; each epoch's randomness comes from generators seeded by (seed, epoch), so a killed run
resumes to the numbers of an uninterrupted one. A model family (``VAEFamily``, ``GANFamily``) brings its parts and
its step: ``vae_step``, or ``g_step`` then ``d_step``.

Bugs of the course report fixed here: it trained on the 10,000 *test* images (``train=False``) — we train on the
60,000-image training split and evaluate on the test split every epoch; its "average loss" divided a total that
accumulated across epochs — we reset it every epoch; the GAN zeroed the discriminator's gradients *before*
``g_loss.backward()``, so the generator's loss leaked into the discriminator's update — ``d_step`` clears them first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import data, losses, models, noise
from .bounds import test_bound
from .data import generator
from .progress import progress
from .store import (CACHE, checkpoint_path, exclusive, load_checkpoint, one_line, remove_orphans, save_checkpoint,
                    set_aside, source_hash)

GRID = 64  # images in the per-epoch sample grid (fixed z)
LR_SCHEDULES = ("constant", "cosine")
# A run has diverged when the epoch mean of a logged term exceeds this in absolute value (per image: a VAE's
# loss is ~1e2 nats, the GAN's ~1): the row is marked ``"diverged": True`` and a warning says so.
DIVERGED = 1e6


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
    lr_schedule: str = "constant"  # constant | cosine (per step: lr·½(1 + cos(π·step/total)), 0 just after the last)
    latent_dim: int = 32
    seed: int = 0
    recon: str = "bce"
    beta: float = 1.0
    recon_weight: float = 1.0
    noise_amount: float = 0.0
    denoise: bool = False  # with noise_amount > 0: noisy inputs, clean targets (a denoising VAE)
    train_subset: int | None = None
    test_subset: int | None = None
    adam_betas: tuple[float, float] = (0.9, 0.999)
    precision: str = "fp32"  # fp32 | bf16 (autocast for the network; losses always in fp32)

    def key(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        if not self.denoise:  # absent unless set, so the key of every other run reads as it always did
            d.pop("denoise")
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
    grids: torch.Tensor  # uint8 [len(grid_epochs), GRID, 28, 28]: samples from one fixed z
    grid_epochs: list[int]  # the epochs after which those grids were drawn (train.grid_epochs)
    discriminator: torch.nn.Module | None = None
    resumed_from: int = 0
    trained_epochs: int = 0  # epochs trained in this call (0 = loaded from the cache)

    @property
    def run_id(self) -> str:
        return self.spec.run_id


# --- speed: library switches, all in this one place (make bench measures each; bench/README.md) ---

def autocast(precision: str, device: torch.device):
    """bf16 autocast of the network when ``precision`` is 'bf16'; a no-op for fp32."""
    if precision == "bf16":
        # no cast cache on CUDA: a cached cast made while capturing would outlive the graph (torch.cuda.graphs)
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=device.type != "cuda")
    return contextlib.nullcontext()


def memory_layout(model: torch.nn.Module) -> torch.nn.Module:
    """The VAEs' conv weights in channels_last: oneDNN skips a layout reorder around each convolution."""
    return model.to(memory_format=torch.channels_last)


def adam(params, spec: RunSpec, device: torch.device = torch.device("cpu")) -> torch.optim.Adam:
    """Adam as the course report configured it, fused (one kernel per step). On CUDA ``capturable``, with
    the learning rate in a device tensor: the step can be replayed in a CUDA graph and scheduled without a sync."""
    if device.type == "cuda":
        return torch.optim.Adam(params, lr=torch.tensor(spec.lr, device=device), betas=spec.adam_betas,
                                fused=True, capturable=True)
    return torch.optim.Adam(params, lr=spec.lr, betas=spec.adam_betas, fused=True)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def restore_optimizer(opt: torch.optim.Optimizer, state: dict, device: torch.device) -> None:
    """Load a checkpoint's optimiser state keeping this device's switches (capturable, lr tensor): a run
    saved on a CPU resumes on a GPU and the other way round."""
    opt.load_state_dict(state)
    for group in opt.param_groups:
        for k in ("capturable", "fused"):
            group[k] = opt.defaults[k]
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, device=device) if group["capturable"] else lr


# --- data and schedule --------------------------------------------------------------------

def run_data(spec: RunSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, test_x, clean_train_x, clean_test_x) as float tensors on ``device``. With ``noise_amount > 0``
    the inputs are salt-and-pepper images (as in the course report), and so are the targets unless ``spec.denoise``
    (then the caller pairs them with the clean images, third and fourth); the noise is drawn once, from the training
    seed + 1 (train) and + 2 (test)."""
    train = data.subset(data.load_split("train").float_images(device), spec.train_subset)
    test = data.subset(data.load_split("test").float_images(device), spec.test_subset)
    if spec.noise_amount > 0:
        noisy_train = noise.salt_and_pepper(train, spec.noise_amount, generator=generator(spec.seed + 1))
        noisy_test = noise.salt_and_pepper(test, spec.noise_amount, generator=generator(spec.seed + 2))
        return noisy_train, noisy_test, train, test
    return train, test, train, test


def lr_at(spec: RunSpec, step: int, total_steps: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total_steps``: constant, or a cosine from
    ``spec.lr`` to 0. A function of the step index only, so a resumed run follows the same schedule."""
    if spec.lr_schedule == "constant":
        return spec.lr
    if spec.lr_schedule == "cosine":
        return spec.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
    raise ValueError(f"lr_schedule {spec.lr_schedule!r} is invalid: allowed one of {list(LR_SCHEDULES)}")


def epoch_generators(spec: RunSpec, epoch: int, device: torch.device):
    """Shuffling (CPU) and model-noise (on ``device``) generators of one epoch, seeded by (seed, epoch) only:
    a resumed run draws what an uninterrupted one would."""
    s = spec.seed * 1_000_003 + epoch
    return generator(s), generator(s + 500_000, device)


# --- the step functions -------------------------------------------------------------------

def vae_step(model, opt, x, recon="bce", beta=1.0, recon_weight=1.0, generator=None, precision="fp32", target=None):
    """One Adam step on the negative (β-)ELBO of batch x (reconstructing ``target`` instead of x when given: a
    denoising VAE); returns ELBOTerms (loss computed in fp32)."""
    with autocast(precision, x.device):
        x_logits, mu, logvar = model(x, generator=generator)
    # fp32 loss: summing 784 pixel terms in bf16 would round a ~100-nat loss to about 1 nat
    terms = losses.elbo(x_logits.float(), x if target is None else target, mu.float(), logvar.float(), recon, beta,
                        recon_weight)
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
    opt_d.zero_grad(set_to_none=True)  # clears the grads g_step's backward left in D (course report bug)
    real_logits = D(real)
    fake_logits = D(fake.detach())  # detach: D's loss must not update G
    loss = losses.d_loss(real_logits, fake_logits)
    loss.backward()
    opt_d.step()
    return loss.detach(), torch.sigmoid(real_logits).mean().detach(), torch.sigmoid(fake_logits).mean().detach()


# --- model families: a run's parts (what its checkpoint holds), its step and its test scores ---

def seeded_init(build: Callable[[], Any], seed: int):
    """``build()`` with torch's global generator seeded by ``seed``, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class VAEFamily:
    def __init__(self, spec: RunSpec, device: torch.device):
        cls = models.BetaVAE if spec.model == "BetaVAE" else models.ConvVAE
        self.spec, self.device = spec, device
        self.model = memory_layout(seeded_init(lambda: cls(latent_dim=spec.latent_dim), spec.seed).to(device))
        self.opt = adam(self.model.parameters(), spec, device)
        self.parts, self.sampler = {"model": self.model, "opt": self.opt}, self.model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def step(self, x: torch.Tensor, g_noise: torch.Generator) -> dict[str, torch.Tensor]:
        s = self.spec
        x, target = (x[:, :1], x[:, 1:]) if s.denoise else (x, None)  # denoising: [noisy | clean] channels
        t = vae_step(self.model, self.opt, x, s.recon, s.beta, s.recon_weight, g_noise, s.precision, target)
        return {"train_loss": t.loss, "train_recon": t.recon, "train_kl": t.kl}

    def scores(self, test_x: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, float]:
        s = self.spec
        t = test_bound(self.model, test_x, s.recon, beta=s.beta, recon_weight=s.recon_weight,
                       generator=generator(s.seed + 4, self.device), target=target)
        return {f"test_{k}": v for k, v in t.items()}


class GANFamily:
    def __init__(self, spec: RunSpec, device: torch.device):
        G, D = seeded_init(lambda: (models.Generator(spec.latent_dim), models.Discriminator()), spec.seed)
        self.spec, self.G, self.D = spec, G.to(device), D.to(device)
        self.opt_g, self.opt_d = adam(self.G.parameters(), spec, device), adam(self.D.parameters(), spec, device)
        self.parts = {"G": self.G, "D": self.D, "opt_g": self.opt_g, "opt_d": self.opt_d}
        self.sampler = self.G

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1  # [0, 1] -> [-1, 1], the course report's Normalize([0.5], [0.5]) to match G's tanh

    def step(self, real: torch.Tensor, g_noise: torch.Generator) -> dict[str, torch.Tensor]:
        """One generator step then one discriminator step on ``real`` (images in [-1, 1]); autocast keeps the
        BCE losses in fp32."""
        z = torch.randn(len(real), self.spec.latent_dim, generator=g_noise, device=real.device)
        with autocast(self.spec.precision, real.device):
            gl, fake = g_step(self.G, self.D, self.opt_g, z)
            dl, d_real, d_fake = d_step(self.D, self.opt_d, real, fake)
        return {"g_loss": gl, "d_loss": dl, "d_real": d_real, "d_fake": d_fake}

    def scores(self, test_x: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, float]:
        return {}


FAMILIES = {"ConvVAE": VAEFamily, "BetaVAE": VAEFamily, "GAN": GANFamily}


def family(spec: RunSpec, device: torch.device) -> VAEFamily | GANFamily:
    return FAMILIES[spec.model](spec, device)


def check_spec(spec: RunSpec) -> None:
    """Unknown model, loss or schedule -> a clear error before any work."""
    if spec.model not in FAMILIES:
        raise ValueError(f"model {spec.model!r} is invalid: allowed one of {list(FAMILIES)}")
    losses.get_recon_loss(spec.recon)
    lr_at(spec, 0, 1)
    for name in ("batch_size", "train_subset", "epochs"):
        value = getattr(spec, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} {value!r} is invalid: allowed an integer >= 1"
                             + (" or None (all images)" if name == "train_subset" else ""))
    if spec.denoise and (spec.model == "GAN" or spec.noise_amount <= 0):
        raise ValueError("denoise=True is invalid here: allowed only for a VAE trained on noise (noise_amount > 0)")
    if spec.model == "GAN" and spec.lr_schedule != "constant":
        raise ValueError(f"lr_schedule {spec.lr_schedule!r} is not supported for the GAN: allowed 'constant'")


# --- speed on CUDA: the same step, launched with the host out of the GPU's way --------------
# A small model's step is a hundred tiny kernels; launched one by one from Python the GPU mostly waits. These
# change how the step is launched, never what it computes (tools/cuda_check.py compares them with the plain path).

WARMUP_STEPS = 3  # eager steps before a capture (PyTorch's CUDA-graph notes: lazy inits happen outside the graph)
# runs trained together at most: each takes two CUDA streams (its own and its graph's capture stream) from torch's
# pool of 32, and two runs must never share one (cuBLAS keeps one workspace per stream); 9 already fill an H200
MAX_TOGETHER = 15


def use_cuda_graphs(device: torch.device) -> bool:
    """Replay each full batch's step as one CUDA graph; ``GENMNIST_CUDA_GRAPHS=0`` launches op by op."""
    return device.type == "cuda" and os.environ.get("GENMNIST_CUDA_GRAPHS", "1") != "0"


class Tally:
    """The epoch's sums of the logged terms (float64) and the first batch whose terms were not finite (-1:
    none), kept on the device: nothing is read back until the epoch ends, so a GPU never waits for the host."""

    def __init__(self, names, device: torch.device):
        self.names = list(names)
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)

    def add(self, terms: dict[str, torch.Tensor], n: int) -> None:
        vals = torch.stack([terms[k].detach().double() for k in self.names])
        self.sums += vals * n
        bad = ~torch.isfinite(vals.sum()) & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(bad, self.step, self.first_bad))
        self.step += 1

    def reset(self) -> None:  # in place: a captured graph keeps writing to these very tensors
        self.sums.zero_()
        self.first_bad.fill_(-1)
        self.step.zero_()


class GraphedStep:
    """``step(x, g_noise)`` and its tally captured once as a CUDA graph for batches of ``like``'s shape, then
    replayed from a fixed input buffer; ``g_noise`` is registered with the graph, so each replay draws the next
    noise as an eager step would (``torch.cuda.graphs``)."""

    def __init__(self, step, like: torch.Tensor, g_noise: torch.Generator, tally: Tally):
        self.x = torch.empty_like(like)
        self.graph = torch.cuda.CUDAGraph()
        self.graph.register_generator_state(g_noise)
        # a capture stream of its own: graphs captured on one shared stream would share its cuBLAS workspace
        with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(like.device)):
            tally.add(step(self.x, g_noise), len(self.x))

    def __call__(self, train_x: torch.Tensor, idx: torch.Tensor) -> None:
        torch.index_select(train_x, 0, idx, out=self.x)
        self.graph.replay()


# --- the loop -----------------------------------------------------------------------------

GRID_EPOCHS = 12  # most epochs a run keeps a sample grid of: a checkpoint's size does not grow with its epochs


def grid_epochs(epochs: int) -> list[int]:
    """The epochs after which a run keeps a sample grid: all up to GRID_EPOCHS, else GRID_EPOCHS spread evenly."""
    k = min(epochs, GRID_EPOCHS)
    return sorted({round(1 + j * (epochs - 1) / max(k - 1, 1)) for j in range(k)})


def fit(spec: RunSpec, device: torch.device | str = "cpu", cache: Path = CACHE, show_progress: bool = True,
        on_epoch_end: Callable[[int, dict], None] | None = None) -> Run:
    """Train (or load, or resume) the run ``spec`` describes. After each epoch: the per-image means of the
    logged terms, the family's test scores, a sample grid from one fixed z, and an atomic checkpoint."""
    return fit_many([spec], device, cache, show_progress, on_epoch_end)[0]


def fit_many(specs: list[RunSpec], device: torch.device | str = "cpu", cache: Path = CACHE, show_progress: bool = True,
             on_epoch_end: Callable[[int, dict], None] | None = None) -> list[Run]:
    """``fit`` for several runs, in ``specs``' order: on a CPU one after another; on a GPU together, each on
    its own CUDA stream, one step of each in turn (one small model leaves most of an H200 idle)."""
    for spec in specs:
        check_spec(spec)
    ids = [spec.run_id for spec in specs]
    if len(set(ids)) < len(ids):
        raise ValueError(f"fit_many: a run is listed twice: {sorted(i for i in ids if ids.count(i) > 1)}")
    device = torch.device(device)
    size = MAX_TOGETHER if device.type == "cuda" else 1  # on a CPU each run is locked only while it trains
    runs = []
    for group in (specs[i:i + size] for i in range(0, len(specs), size)):
        with contextlib.ExitStack() as locks:
            # another kernel training one of these runs (make report's parallel notebooks): wait, then load;
            # the locks are taken in one order everywhere, so two kernels cannot deadlock
            for run_id in sorted(spec.run_id for spec in group):
                locks.enter_context(exclusive(checkpoint_path(run_id, cache)))
            trainings = [Training(spec, device, cache) for spec in group]
            if device.type == "cuda":
                _together(trainings, show_progress, on_epoch_end)
            else:
                for _ in trainings[0].steps(show_progress, on_epoch_end):
                    pass
            runs += [t.result() for t in trainings]
    return runs


def fit_arms(arms: dict[Any, list[RunSpec]], device: torch.device | str = "cpu", **kwargs) -> dict[Any, list[Run]]:
    """``fit_many`` over the runs of every arm at once (on a GPU they all train together), returned per arm."""
    runs = iter(fit_many([spec for specs in arms.values() for spec in specs], device, **kwargs))
    return {arm: [next(runs) for _ in specs] for arm, specs in arms.items()}


def _together(trainings: list[Training], show_progress: bool, on_epoch_end) -> None:
    """One step of each unfinished training in turn, each on its own CUDA stream."""
    streams = [torch.cuda.Stream(device=t.device) for t in trainings]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream(s.device))
    many = len(trainings) > 1
    running = {i: t.steps(show_progress and not many, on_epoch_end) for i, t in enumerate(trainings)}
    total = sum(t.steps_left for t in trainings)
    ticks = iter(progress(range(total), total, f"{len(trainings)} runs together", show_progress and many))
    try:
        while running:
            for i, steps in list(running.items()):
                with torch.cuda.stream(streams[i]):
                    if next(steps, None) is None:
                        del running[i]
                        continue
                next(ticks, None)
        for _ in ticks:  # the last progress line
            pass
    finally:  # also when one run fails: nothing queued on a run's stream outlives this call
        for steps in running.values():
            steps.close()
        for s in streams:
            torch.cuda.current_stream(s.device).wait_stream(s)


class Training:
    """One run being trained: its family's parts, restored from the checkpoint if there is one, and
    ``steps()``, which trains the remaining epochs and yields after every optimiser step."""

    def __init__(self, spec: RunSpec, device: torch.device, cache: Path):
        self.spec, self.device = spec, device
        self.run_id, self.path = spec.run_id, checkpoint_path(spec.run_id, cache)
        remove_orphans(self.path)  # a save killed mid-write (we hold the run's lock: nobody is writing)
        self.fam, self.history, self.grids, self.grid_at = family(spec, device), [], [], []
        keys = (*self.fam.parts, "history", "grids", "grid_epochs")
        state = load_checkpoint(self.path, owner=self.run_id, keys=keys) or self._shorter_run(cache, keys)
        try:
            if state is not None:
                self.history, self.grids, self.grid_at = (list(state[k]) for k in ("history", "grids", "grid_epochs"))
                for name, part in self.fam.parts.items():
                    if isinstance(part, torch.optim.Optimizer):
                        restore_optimizer(part, state[name], device)
                    else:
                        part.load_state_dict(state[name])
                if len(self.grids) != len(self.grid_at):
                    raise ValueError(f"{len(self.grids)} sample grids for {len(self.history)} epochs")
        except torch.OutOfMemoryError:  # the checkpoint is fine, the device is full
            raise
        except Exception as e:  # noqa: BLE001 - wrong shapes, keys or dtypes: a broken checkpoint, retrain
            set_aside(self.path, f"{type(e).__name__}: {one_line(e)}")
            self.fam, self.history, self.grids, self.grid_at = family(spec, device), [], [], []  # fresh parts
        self.start = len(self.history)
        self.n_batches = math.ceil(min(spec.train_subset or math.inf, data.SPLIT_SIZES["train"]) / spec.batch_size)
        self.steps_left = max(spec.epochs - self.start, 0) * self.n_batches

    def _shorter_run(self, cache: Path, keys: tuple[str, ...]) -> dict | None:
        """Under a constant learning rate a run of e epochs *is* the first e epochs of a longer one (each epoch's
        randomness depends on (seed, epoch) only): start from the longest finished shorter run in the cache."""
        if self.spec.lr_schedule != "constant":
            return None
        for e in range(self.spec.epochs - 1, 0, -1):
            short = dataclasses.replace(self.spec, epochs=e)
            path = checkpoint_path(short.run_id, cache)
            if not path.exists():
                continue
            with exclusive(path):
                state = load_checkpoint(path, owner=short.run_id, keys=keys)
            if state is None or len(state["history"]) != e:
                continue
            done, wanted = state["grid_epochs"], set(grid_epochs(self.spec.epochs))  # keep the grids we also draw
            state["grids"] = [g for g, at in zip(state["grids"], done) if at in wanted]
            state["grid_epochs"] = [at for at in done if at in wanted]
            print(f"{self.run_id}: continuing {short.run_id} ({e} epochs, constant learning rate)", flush=True)
            return state
        return None

    def _train_mode(self, on: bool) -> None:
        for m in self.fam.parts.values():
            if isinstance(m, torch.nn.Module):
                m.train(on)

    def steps(self, show_progress: bool = True, on_epoch_end: Callable[[int, dict], None] | None = None):
        spec, device, fam, run_id = self.spec, self.device, self.fam, self.run_id
        if self.start >= spec.epochs:
            return
        fixed_z = torch.randn(GRID, spec.latent_dim, generator=generator(spec.seed + 3)).to(device)
        train_x, test_x, clean_train_x, clean_test_x = run_data(spec, device)
        test_target = clean_test_x if spec.denoise else None  # a denoising VAE's test curve scores the clean digits
        if spec.denoise:  # each image's noisy copy and its clean original, side by side as two channels
            train_x = torch.cat([train_x, clean_train_x], dim=1)
        train_x = fam.inputs(train_x)
        n, bs, n_batches = len(train_x), spec.batch_size, self.n_batches
        optimizers = [p for p in fam.parts.values() if isinstance(p, torch.optim.Optimizer)]
        g_noise = generator(0, device)  # one, reseeded every epoch: a CUDA graph holds on to the one it registered
        tally, graphed, eager_steps = None, None, 0
        for epoch in range(self.start + 1, spec.epochs + 1):
            g_shuffle, g_epoch = epoch_generators(spec, epoch, device)
            g_noise.manual_seed(g_epoch.initial_seed())
            order = torch.randperm(n, generator=g_shuffle).to(device)  # one copy an epoch, none a step
            self._train_mode(True)
            if tally is not None:
                tally.reset()
            t0 = time.perf_counter()
            for i in progress(range(n_batches), n_batches, f"{run_id} epoch {epoch}/{spec.epochs}", show_progress):
                idx = order[i * bs:(i + 1) * bs]
                for opt in optimizers:
                    set_lr(opt, lr_at(spec, (epoch - 1) * n_batches + i, spec.epochs * n_batches))
                if graphed is None and eager_steps >= WARMUP_STEPS and len(idx) == bs and use_cuda_graphs(device):
                    try:
                        graphed = GraphedStep(fam.step, train_x[:bs], g_noise, tally)
                    except Exception as e:  # noqa: BLE001 - graphs are a speed switch: fall back to eager
                        warnings.warn(f"run {run_id}: CUDA graph capture failed ({type(e).__name__}: {e}); "
                                      "training op by op instead", stacklevel=2)
                        graphed = False
                if graphed and len(idx) == bs:
                    graphed(train_x, idx)
                else:
                    terms = fam.step(train_x[idx], g_noise)
                    tally = tally or Tally(terms, device)
                    tally.add(terms, len(idx))
                    eager_steps += 1
                yield True
            if (bad := int(tally.first_bad)) >= 0:  # the epoch's first read-back from the device
                last = f"{self.path} (epoch {epoch - 1})" if self.path.exists() else "none (no epoch finished yet)"
                raise TrainingError(f"run {run_id}: non-finite loss at epoch {epoch}, batch {bad}; training stopped. "
                                    f"Last good checkpoint: {last}. Try a smaller learning rate.")
            sums = tally.sums.cpu()
            row = {"epoch": epoch, **{k: (sums[j] / n).item() for j, k in enumerate(tally.names)},
                   "train_seconds": time.perf_counter() - t0}
            if big := {k: row[k] for k in tally.names if abs(row[k]) > DIVERGED}:
                row["diverged"] = True
                warnings.warn(f"run {run_id} diverged at epoch {epoch}: "
                              f"{', '.join(f'{k} = {v:.3g}' for k, v in big.items())} per image (|value| > "
                              f"{DIVERGED:g}); its results are not meaningful. Try a smaller learning rate.", stacklevel=2)
            self._train_mode(False)
            row.update(fam.scores(test_x, test_target))
            self.history.append(row)
            if epoch in grid_epochs(spec.epochs):
                self.grids.append(data.to_uint8(fam.sampler.sample(GRID, z=fixed_z)))
                self.grid_at.append(epoch)
            save_checkpoint(self.path, {**{name: part.state_dict() for name, part in fam.parts.items()},
                                        "history": self.history, "grids": self.grids, "grid_epochs": self.grid_at,
                                        "run_id": run_id, "spec": spec.key()})
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)

    def result(self) -> Run:
        spec = self.spec
        if loaded := [row["epoch"] for row in self.history[:self.start] if row.get("diverged")]:
            warnings.warn(f"run {self.run_id} (loaded from its checkpoint) diverged at epoch(s) {loaded}; its "
                          "results are not meaningful. Try a smaller learning rate.", stacklevel=2)
        self._train_mode(False)
        return Run(spec, self.fam.sampler, self.history, torch.stack(self.grids),
                   grid_epochs=list(self.grid_at), discriminator=self.fam.parts.get("D"),
                   resumed_from=self.start, trained_epochs=spec.epochs - self.start)

