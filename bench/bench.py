"""``make bench``: the course report's training pipeline vs lib's, on the CPU it runs on.

Measure 1, step throughput (information): ``torch.utils.benchmark`` times one training step, in
alternating rounds: lib's ConvVAE step as ``lib.train.fit`` runs it (``VAEFamily.step``), one-change
variants of it, and the course report's pipeline (torchvision MNIST + ``ToTensor`` through a ``DataLoader``,
encoder run twice, fp32; its step includes fetching the batch).

Measure 2, time to quality (the headline): the course report's pipeline, lib's default ConvVAE run and
pytorch/examples' MLP VAE train round-robin in one process, ``EVAL_EVERY`` steps at a time; one
shared function evaluates the BCE test bound off the training clock. Reported: training seconds
until it first reaches ``TARGET_NATS``. Targets are fixed below; reported, never asserted.

Measure 3, two kernels at once (why ``make report`` runs two notebooks at a time): fit's step of each model
family timed in one process with every core, then in two processes at once with half the cores each; reported:
their summed images/s over the one process's.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # lib, also without the editable install

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils import benchmark  # noqa: E402

from harness import config as lconfig, notebook as lnotebook  # noqa: E402
from lib import data as ldata, losses as llosses, train as ltrain  # noqa: E402
from lib.bounds import test_bound as lib_test_bound  # noqa: E402

TARGET_NATS = 106.0  # BCE test bound, nats/image, over all 10,000 test images
TARGET_COURSE_OVER_LIB = 4.0  # course-report pipeline ("course" in bench.json) time to quality / lib's, at least
TARGET_MLP_OVER_LIB = 1.0  # pytorch/examples MLP time / lib time, more than
EVAL_EVERY = 100  # training steps between evaluations
TEST_SEED = 12345  # evaluation noise: the same generator seed for every trainer and evaluation
INIT_SEED = 0
CPU = torch.device("cpu")


# --- the course report's pipelines, faithfully (CPU instead of .cuda(), the train split) --------

class CourseConvVAE(nn.Module):
    """The course report's basic-tier VAE, layer for layer; ``forward`` runs the encoder twice."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2, inplace=True))
        self.get_mu = nn.Sequential(nn.Linear(128 * 7 * 7, 32))
        self.get_logvar = nn.Sequential(nn.Linear(128 * 7 * 7, 32))
        self.get_temp = nn.Sequential(nn.Linear(32, 128 * 7 * 7))
        self.decoder = nn.Sequential(nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(inplace=True),
                                     nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Sigmoid())

    def get_z(self, mu, logvar):
        eps = torch.randn(mu.size(0), mu.size(1))  # torch's global generator; the course report then called .cuda()
        return mu + eps * torch.exp(logvar / 2)

    def forward(self, x):
        out1 = self.encoder(x)
        mu = self.get_mu(out1.view(out1.size(0), -1))
        out2 = self.encoder(x)  # the course report's second encoder pass
        logvar = self.get_logvar(out2.view(out2.size(0), -1))
        z = self.get_z(mu, logvar)
        return self.decoder(self.get_temp(z).view(z.size(0), 128, 7, 7)), mu, logvar

    def encode(self, x):  # evaluation adapter: in eval mode both encoder passes give the same features
        h = self.encoder(x).flatten(1)
        return self.get_mu(h), self.get_logvar(h)

    def decode_probs(self, z):  # evaluation adapter
        return self.decoder(self.get_temp(z).view(-1, 128, 7, 7))


def course_vae_loss(new_x, old_x, mu, logvar):
    bce = F.binary_cross_entropy(new_x, old_x, reduction="sum")  # the course report's size_average=False
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())  # + its KLD


def tv_batches(batch_size, seed):
    """Endless (images, labels) batches: torchvision MNIST (train split, the raw files under data/)
    with per-item ``ToTensor``, through a shuffled DataLoader without workers, seeded."""
    ldata.ensure_mnist()
    ds = torchvision.datasets.MNIST(str(ldata.DEFAULT_ROOT), train=True, download=False,
                                    transform=torchvision.transforms.ToTensor())
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    return endless(lambda: iter(loader))


def endless(make_iter):  # epoch after epoch of make_iter()
    while True:
        yield from make_iter()


# --- pytorch/examples' VAE --------------------------------------------------------------------
# After https://github.com/pytorch/examples/blob/main/vae/main.py (BSD-3-Clause), written anew:
# the architecture and settings match (784-400-20 MLP, ReLU, sigmoid output, summed BCE + KLD,
# Adam 1e-3, batch 128, torchvision MNIST + ToTensor through a shuffled DataLoader, seed 1).

class ExamplesMLPVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def encode(self, x):
        h = F.relu(self.fc1(x.reshape(-1, 784)))
        return self.fc21(h), self.fc22(h)

    def decode_probs(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode_probs(z), mu, logvar


# --- one training step of each torchvision pipeline, fetching its batch included --------------

def course_vae_step(model, opt, it, tally):
    data, _ = next(it)
    new_img, mu, logvar = model(data)
    loss = course_vae_loss(new_img, data, mu, logvar)
    tally[0] += loss.item()
    opt.zero_grad()
    loss.backward()
    opt.step()


def examples_step(model, opt, it, tally):
    data, _ = next(it)
    opt.zero_grad()
    recon, mu, logvar = model(data)
    loss = (F.binary_cross_entropy(recon, data.view(-1, 784), reduction="sum")
            - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()))
    loss.backward()
    tally[0] += loss.item()
    opt.step()


# --- lib's side -------------------------------------------------------------------------------

def lib_spec(notebook: str, model: str = "ConvVAE", **changes) -> ltrain.RunSpec:
    """``spec_from`` of the notebook's resolved default profile on the CPU (precision 'auto' resolved)."""
    cfg = lconfig.resolve(notebook, "default", device="cpu", output_dir=tempfile.mkdtemp(prefix="bench-"))
    return lnotebook.spec_from(cfg, "bench", model=model, **changes)


def on_lib_batches(step, train_x, batch_size):
    """A no-argument step: ``step(batch, noise_generator)`` on lib's in-memory shuffled batches."""
    g_shuffle, g_noise = ltrain.epoch_generators(ltrain.RunSpec("bench"), 1, CPU)
    idx = endless(lambda: ldata.batches(len(train_x), batch_size, g_shuffle))
    return lambda: step(train_x[next(idx)], g_noise)


def lib_vae_variant(spec, train_x, nchw=False, fused=True):
    """fit's step (``VAEFamily.step``) for ``spec``; with one change, ``vae_step`` with fit's arguments."""
    fam = ltrain.VAEFamily(spec, CPU)
    if not nchw and fused:
        return on_lib_batches(fam.step, train_x, spec.batch_size)
    model, opt = fam.parts["model"], fam.parts["opt"]
    if not fused:
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr, betas=spec.adam_betas, foreach=False, fused=False)
    if nchw:  # the default layout instead of lib.train.memory_layout's channels_last
        model.to(memory_format=torch.contiguous_format)

    def step(x, g):
        return ltrain.vae_step(model, opt, x, spec.recon, spec.beta, spec.recon_weight, g, spec.precision)
    return on_lib_batches(step, train_x, spec.batch_size)


def lib_eval_variant(spec, test_x, nchw=False):
    """``lib.bounds.test_bound`` (fp32, eval mode) of an untrained model of ``spec`` on ``test_x``."""
    model = ltrain.VAEFamily(spec, CPU).parts["model"].eval()
    if nchw:
        model.to(memory_format=torch.contiguous_format)
    return lambda: lib_test_bound(model, test_x, spec.recon, generator=torch.Generator().manual_seed(TEST_SEED))


# --- measure 1: step throughput ---------------------------------------------------------------

def throughput_plan(train_x, test_x):
    """{model: (images per call, [(variant, step, threads, note)])}: a training step of 64 images, or
    the test bound of 1,000 test images."""
    th, conv = torch.get_num_threads(), lib_spec("01_vae_basic", recon="bce")
    beta = lib_spec("04_beta_vae", model="BetaVAE", beta=2.0)
    cv = ltrain.seeded_init(CourseConvVAE, INIT_SEED)
    cv_step = partial(course_vae_step, cv, torch.optim.Adam(cv.parameters(), lr=1e-3), tv_batches(64, 0), [0.0])
    return {"ConvVAE": (64, [
        ("course", cv_step, th, "DataLoader+ToTensor, encoder twice, fp32, Adam 1e-3, .item()"),
        ("lib", lib_vae_variant(conv, train_x), th, f"VAEFamily.step: {conv.precision}, fused Adam, channels_last"),
        ("lib fp32", lib_vae_variant(dataclasses.replace(conv, precision="fp32"), train_x), th, "no autocast"),
        ("lib NCHW", lib_vae_variant(conv, train_x, nchw=True), th, "default memory layout"),
        ("lib threads=1", lib_vae_variant(conv, train_x), 1, "one intra-op thread"),
        ("lib adam for-loop", lib_vae_variant(conv, train_x, fused=False), th, "Adam(fused=False)")]),
        "BetaVAE": (64, [  # why spec_from keeps the small BetaVAE in fp32, and what channels_last does for it
        ("lib", lib_vae_variant(beta, train_x), th, "fp32, as spec_from picks for the BetaVAE; channels_last"),
        ("lib bf16", lib_vae_variant(dataclasses.replace(beta, precision="bf16"), train_x), th, "bf16 autocast"),
        ("lib NCHW", lib_vae_variant(beta, train_x, nchw=True), th, "default memory layout")]),
        "ConvVAE eval": (1000, [  # the test bound every epoch and every score computes, in fp32
        ("lib", lib_eval_variant(conv, test_x[:1000]), th, "test_bound, 1,000 images, fp32, channels_last"),
        ("lib NCHW", lib_eval_variant(conv, test_x[:1000], nchw=True), th, "default memory layout")])}


def measure_throughput(plan, rounds, min_run_time, log):
    """Alternating rounds (the order rotates each round) of one blocked_autorange per variant."""
    out, measurements = {}, []
    for model, (per_call, variants) in plan.items():
        for _, fn, _, _ in variants * 3:  # warm-up: first batches, oneDNN primitive caches
            fn()
        ips = {name: [] for name, *_ in variants}
        for r in range(rounds):
            for name, fn, threads, _ in variants[r % len(variants):] + variants[: r % len(variants)]:
                m = benchmark.Timer(stmt="step()", globals={"step": fn}, num_threads=threads,
                                    label=f"{model}: {per_call} images per call", sub_label=name,
                                    description=f"round {r + 1}").blocked_autorange(min_run_time=min_run_time)
                measurements.append(m)
                ips[name].append(per_call / m.median)
            log(f"throughput {model} round {r + 1}/{rounds}: "
                + ", ".join(f"{n} {v[-1]:.0f}" for n, v in ips.items()) + " img/s")
        out[model] = {}
        for name, _, threads, note in variants:
            row = out[model][name] = {"threads": threads, "note": note, "images_per_s": [round(v, 1) for v in
                                      ips[name]], "images_per_s_median": round(statistics.median(ips[name]), 1)}
            for ref in ("course", "lib"):
                if name != ref and ref in ips:
                    per_round = [a / b for a, b in zip(ips[name], ips[ref])]
                    row[f"ratio_vs_{ref}_per_round"] = [round(v, 3) for v in per_round]
                    row[f"ratio_vs_{ref}"] = round(statistics.median(per_round), 3)
    return out, measurements


# --- measure 2: time to quality ---------------------------------------------------------------

@torch.inference_mode()
def bce_bound(model, x):
    """Negative ELBO in nats/image over all of x: eval mode, one z per image, eps drawn per 1,000-image
    batch from a generator seeded TEST_SEED (as lib.bounds.test_bound draws it). ``encode`` -> (mu,
    logvar), then ``decode_logits`` (lib) or ``decode_probs`` (course report, MLP: BCE on probabilities with
    torch's log clamp at -100, the loss those pipelines train on)."""
    was_training, g, total = model.training, torch.Generator().manual_seed(TEST_SEED), 0.0
    model.eval()
    for s in range(0, len(x), 1000):
        xb = x[s: s + 1000]
        mu, logvar = model.encode(xb)
        z = mu + torch.randn(mu.shape, generator=g) * torch.exp(0.5 * logvar)
        if hasattr(model, "decode_logits"):
            rec = llosses.bce(model.decode_logits(z), xb, per_image=True)
        else:
            probs = model.decode_probs(z).reshape(xb.shape)
            rec = F.binary_cross_entropy(probs, xb, reduction="none").flatten(1).sum(1)
        total += (rec.double() + llosses.gaussian_kl(mu, logvar, reduce=False).sum(1).double()).sum().item()
    model.train(was_training)
    return total / len(x)


def torchvision_trainer(model, step, it, seed, every, info):
    """The course report's / pytorch/examples' loop: Adam 1e-3 constant over the DataLoader's epochs (``it``).
    Torch's global generator (their eps) holds this trainer's own state while it trains."""
    opt, tally = torch.optim.Adam(model.parameters(), lr=1e-3), [0.0]
    rng = torch.Generator().manual_seed(seed).get_state()
    while True:
        outer = torch.get_rng_state()
        torch.set_rng_state(rng)
        for _ in range(every):
            step(model, opt, it, tally)
        rng = torch.get_rng_state()
        torch.set_rng_state(outer)
        info["steps"] += every
        yield


def lib_trainer(fam, spec, train_x, every, info):
    """fit's loop around ``fam.step``: per-epoch generators, lib's batches, ``lr_at`` per step over
    the planned epochs, the finiteness check; it ends with the schedule."""
    opt, n, bs = fam.parts["opt"], len(train_x), spec.batch_size
    nb = math.ceil(n / bs)
    tally = None
    for epoch in range(1, spec.epochs + 1):
        g_shuffle, g_noise = ltrain.epoch_generators(spec, epoch, CPU)
        order = torch.randperm(n, generator=g_shuffle)
        for i in range(nb):
            idx = order[i * bs:(i + 1) * bs]
            ltrain.set_lr(opt, ltrain.lr_at(spec, (epoch - 1) * nb + i, spec.epochs * nb))
            terms = fam.step(train_x[idx], g_noise)
            tally = tally or ltrain.Tally(terms, CPU)
            tally.add(terms, len(idx))  # fit's epoch sums and finite check, read at the epoch's end
            info["steps"] += 1
            if info["steps"] % every == 0 or info["steps"] == spec.epochs * nb:
                yield
        if int(tally.first_bad) >= 0:
            raise FloatingPointError(f"lib: non-finite loss at epoch {epoch}, batch {int(tally.first_bad)}")
        tally.reset()


def time_to_quality(train_x, test_x, budget, every, log):
    """Round-robin over the three trainers until each reaches TARGET_NATS, has trained ``budget``
    seconds, or (lib) ends its schedule."""
    spec = lib_spec("01_vae_basic", recon="bce")
    fam, mlp = ltrain.VAEFamily(spec, CPU), ltrain.seeded_init(ExamplesMLPVAE, 1)
    course = ltrain.seeded_init(CourseConvVAE, INIT_SEED)
    trainers = {  # name: (model, batch, generator factory, description)
        "course": (course, 64, partial(torchvision_trainer, course, course_vae_step, tv_batches(64, 0), 0, every),
                   "course report ConvVAE: Adam 1e-3 constant, batch 64, fp32, DataLoader+ToTensor, encoder twice"),
        "lib": (fam.parts["model"], spec.batch_size, partial(lib_trainer, fam, spec, train_x, every),
                f"lib ConvVAE, 01_vae_basic/default: lr {spec.lr} {spec.lr_schedule} over {spec.epochs} epochs, "
                f"batch {spec.batch_size}, {spec.precision}, fused Adam betas {tuple(spec.adam_betas)}"),
        "mlp": (mlp, 128, partial(torchvision_trainer, mlp, examples_step, tv_batches(128, 1), 1, every),
                "pytorch/examples vae/main.py MLP VAE: Adam 1e-3, batch 128, DataLoader+ToTensor"),
    }
    res, gens = {}, {}
    for name, (_, bs, make, desc) in trainers.items():
        res[name] = {"description": desc, "batch_size": bs, "reached": False, "seconds_to_target": None,
                     "best_bound": None, "steps": 0, "epochs": 0.0, "train_seconds": 0.0, "eval_seconds": 0.0,
                     "stopped": None, "history": []}
        gens[name] = make(res[name])  # the generator counts res[name]["steps"]
        log(f"ttq {name}: {desc}")
    active = list(trainers)
    while active:
        for name in list(active):
            model, bs, r = trainers[name][0], trainers[name][1], res[name]
            t0 = time.perf_counter()
            model.train()
            ended = next(gens[name], "ended") == "ended"
            r["train_seconds"] += time.perf_counter() - t0
            r["epochs"] = r["steps"] / math.ceil(len(train_x) / bs)
            if not ended:
                t0 = time.perf_counter()
                b = bce_bound(model, test_x)
                r["eval_seconds"] += time.perf_counter() - t0
                r["history"].append([r["steps"], round(r["train_seconds"], 2), round(b, 3)])
                r["best_bound"] = b if r["best_bound"] is None else min(b, r["best_bound"])
                log(f"ttq {name:6} step {r['steps']:6d}  epoch {r['epochs']:5.2f}  train {r['train_seconds']:7.1f} s"
                    f"  eval {r['eval_seconds']:6.1f} s  bound {b:7.2f}")
                if b <= TARGET_NATS:
                    r["reached"], r["seconds_to_target"], r["stopped"] = True, r["train_seconds"], "target reached"
            r["stopped"] = r["stopped"] or ("schedule ended" if ended else
                                            "budget spent" if r["train_seconds"] >= budget else None)
            if r["stopped"]:
                active.remove(name)
    res["lib"]["final_bound_bench"] = bce_bound(fam.parts["model"], test_x)  # cross-check of bce_bound:
    res["lib"]["final_bound_lib_bounds"] = lib_test_bound(  # the same noise, so the same value
        fam.parts["model"], test_x, "bce", generator=torch.Generator().manual_seed(TEST_SEED))["bound"]
    return {n: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for n, r in res.items()}


def ttq_ratio(slow, fast, target, strict=False):
    """time(slow) / time(fast); where one side did not reach the target its training seconds give a bound."""
    ta, tb = slow["seconds_to_target"], fast["seconds_to_target"]
    if not (ta or tb):
        return {"value": None, "kind": "neither reached", "target": target, "met": None}
    value = (ta or slow["train_seconds"]) / (tb or fast["train_seconds"])
    kind = "=" if ta and tb else ">=" if tb else "<="
    ok = value > target if strict else value >= target
    met = ok if kind == "=" else True if ok and kind == ">=" else False if not ok and kind == "<=" else None
    return {"value": round(value, 3), "kind": kind, "target": target, "met": met}


# --- report -----------------------------------------------------------------------------------

def machine() -> dict:
    kv = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in
          Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines() if ":" in line)}

    def git(*a):
        try:
            return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()
        except OSError:
            return None
    return {"cpu_model_name": kv.get("model name", platform.processor()), "cpu_family": kv.get("cpu family"),
            "cpu_model": kv.get("model"), "cores_per_socket": kv.get("cpu cores"), "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)),
            "bf16_isa": sorted(f for f in kv.get("flags", "").split() if "bf16" in f or f.startswith("amx")),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "precision_auto": lconfig.resolve_precision("auto", CPU),
            "git_commit": git("rev-parse", "--short", "HEAD"),
            "git_dirty_lib_bench": bool(git("status", "--porcelain", "--", "lib", "harness", "bench"))}


# --- measure 3: two kernels at once ----------------------------------------------------------

FAMILIES = {"ConvVAE": ("01_vae_basic", "ConvVAE"), "BetaVAE": ("04_beta_vae", "BetaVAE"), "GAN": ("03_gan", "GAN")}


def worker(seconds: float) -> None:
    """``--worker``: images/s of fit's step (the family's ``step``) per model family, each for ``seconds``, as JSON."""
    train_x = ldata.load_split("train").float_images()
    out = {}
    for name, (notebook, model) in FAMILIES.items():
        spec = lib_spec(notebook, model=model)
        fam = ltrain.family(spec, CPU)
        step = on_lib_batches(fam.step, fam.inputs(train_x), spec.batch_size)
        for _ in range(5):
            step()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step()
            n += 1
        out[name] = n * spec.batch_size / (time.perf_counter() - t0)
    print(json.dumps(out), flush=True)


def two_kernels(seconds: float, log) -> dict:
    """Summed images/s of two worker processes at once (cores // 2 threads each) over one worker with every core."""
    cores = os.cpu_count() or 1

    def run(n: int, threads: int) -> list[dict]:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(seconds)], env=env,
                                  stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]

    one = run(1, cores)[0]
    two = run(2, max(1, cores // 2))
    out = {name: {"one_kernel_images_per_s": round(one[name], 1), "threads_one": cores,
                  "two_kernels_images_per_s": [round(t[name], 1) for t in two], "threads_each": max(1, cores // 2),
                  "ratio": round(sum(t[name] for t in two) / one[name], 3)} for name in FAMILIES}
    log("two kernels at once: " + ", ".join(f"{n} {r['ratio']:.2f}x" for n, r in out.items()))
    return out


def print_summary(rep) -> None:
    num = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    print(f"\n{'model':12} {'variant':18} {'threads':>7} {'img/s':>8} {'x course':>8} {'x lib':>6}  note")
    for model, rows in rep["throughput"].items():
        for name, r in rows.items():
            print(f"{model:12} {name:18} {r['threads']:7d} {r['images_per_s_median']:8.0f} "
                  f"{num(r.get('ratio_vs_course'), '.2f'):>8} {num(r.get('ratio_vs_lib'), '.2f'):>6}  {r['note']}")
    s = rep["settings"]
    print(f"\nTime to a test bound <= {TARGET_NATS} nats/image ({s['test_images']} test images, every "
          f"{s['eval_every_steps']} steps, budget {s['ttq_budget_s']:.0f} s of training each):")
    for name, r in rep["time_to_quality"].items():
        got = f"{r['seconds_to_target']:.1f} s" if r["reached"] else f"not reached in {r['train_seconds']:.0f} s"
        print(f"  {name:6} {got:22} best {num(r['best_bound'], '.2f'):>7}  {r['steps']} steps "
              f"({r['epochs']:.2f} epochs), eval {r['eval_seconds']:.1f} s, stopped: {r['stopped']}")
    for key, label in (("course_over_lib", "course / lib"), ("mlp_over_lib", "MLP / lib")):
        t = rep["targets"][key]
        print(f"  {label}: {t['kind']} {num(t['value'], '.2f')}  (target {t['target']}, met: {t['met']})")
    print(f"\nTwo kernels at once, {rep['settings']['threads']} cores shared (summed img/s over one kernel's):")
    for name, r in rep["two_kernels"].items():
        print(f"  {name:8} one {r['one_kernel_images_per_s']:8.0f} img/s ({r['threads_one']} threads), two "
              f"{' + '.join(f'{v:.0f}' for v in r['two_kernels_images_per_s'])} ({r['threads_each']} each): {r['ratio']:.2f}x")
    for w in rep["warnings"]:
        print(f"WARNING: {w}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "report" / "bench.json", help="JSON report path")
    p.add_argument("--ttq-budget", type=float, default=None, help="training seconds per trainer (600; quick 20)")
    p.add_argument("--rounds", type=int, default=None, help="throughput rounds (5; quick 2)")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds per blocked_autorange (2; quick 0.2)")
    p.add_argument("--quick", action="store_true", help="development run: seconds per measure, 1,000 test images")
    p.add_argument("--worker", type=float, default=None, help=argparse.SUPPRESS)  # measure 3's child process
    args = p.parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return 0
    q = args.quick
    budget = args.ttq_budget if args.ttq_budget is not None else (20.0 if q else 600.0)
    rounds, min_run_time = args.rounds or (2 if q else 5), args.min_run_time or (0.2 if q else 2.0)
    every = 25 if q else EVAL_EVERY
    t_start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)  # noqa: E731
    threads = lconfig.set_threads()
    load_start, mach = list(os.getloadavg()), machine()
    log(f"{mach['cpu_model_name']} (family {mach['cpu_family']}), {mach['usable_cpus']} CPUs, torch {mach['torch']}, "
        f"{threads} threads, precision auto -> {mach['precision_auto']}, load {load_start}" + (" [QUICK]" if q else ""))
    train_x = ldata.load_split("train").float_images()
    test_x = ldata.load_split("test").float_images()[: 1000 if q else None]
    tp, measurements = measure_throughput(throughput_plan(train_x, test_x), rounds, min_run_time, log)
    compare = benchmark.Compare(measurements)
    compare.trim_significant_figures()
    compare.print()
    ttq = time_to_quality(train_x, test_x, budget, every, log)
    kernels = two_kernels(2.0 if q else 10.0, log)
    load_end = list(os.getloadavg())
    # at the end the 1-minute load includes the bench's own threads
    limits = {"start": 0.75 * mach["usable_cpus"], "end": 0.75 * mach["usable_cpus"] + threads}
    warnings = [f"load average {la[0]:.2f} at the {when} on {mach['usable_cpus']} CPUs: other work shared the cores"
                for when, la in (("start", load_start), ("end", load_end)) if la[0] > limits[when]]
    warnings += [f"throughput {m} '{n}': rounds differ by more than 1.5x" for m, rows in tp.items()
                 for n, r in rows.items() if max(r["images_per_s"]) > 1.5 * min(r["images_per_s"])]
    rep = {
        "quick": q,
        "note": "QUICK development run (tiny budgets, 1,000 test images): NOT a result" if q else "full run",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["bench/bench.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": mach, "loadavg_start": load_start, "loadavg_end": load_end,
        "settings": {"target_nats": TARGET_NATS, "eval_every_steps": every, "test_images": len(test_x),
                     "test_noise_seed": TEST_SEED, "ttq_budget_s": budget, "rounds": rounds,
                     "min_run_time_s": min_run_time, "threads": threads},
        "throughput": tp,
        "throughput_definition": "images/s = images per call (64 per training step, 1,000 per test bound) / median s "
                                 "per call (blocked_autorange); ratio: median per-round ratio",
        "time_to_quality": ttq,
        "time_to_quality_definition": f"training s (evaluation excluded) until the BCE test bound first <= "
                                      f"{TARGET_NATS}, evaluated every {every} steps; history: [steps, train s, bound]",
        "targets": {"course_over_lib": ttq_ratio(ttq["course"], ttq["lib"], TARGET_COURSE_OVER_LIB),
                    "mlp_over_lib": ttq_ratio(ttq["mlp"], ttq["lib"], TARGET_MLP_OVER_LIB, strict=True),
                    "note": "reported, never asserted; '>=' / '<=': one side's training seconds stand in for its time"},
        "two_kernels": kernels,
        "two_kernels_definition": "images/s of fit's step per family for a fixed time: one process with every core, "
                                  "then two processes at once with half the cores each; ratio = summed two / one",
        "warnings": warnings,
        "bench_seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(rep, indent=2) + "\n")
    os.replace(tmp, args.out)
    print_summary(rep)
    print(f"Wrote {args.out}")
    return 0


def locked_main() -> int:
    """main() holding report.lock, as make report does (both write report/): while a build holds it, the
    bench refuses at once, naming the holder, with exit code 3. ``--worker`` children run unlocked."""
    if "--worker" in sys.argv:
        return main()
    from builder.report import REPORT, ReportError, report_lock
    try:
        with report_lock(REPORT):
            return main()
    except ReportError as e:
        print(f"make bench: {e}", file=sys.stderr)
        return e.code


if __name__ == "__main__":
    sys.exit(locked_main())
