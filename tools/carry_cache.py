"""Carry a model cache across a change of lib's code that trains the very same models (code moved between modules,
an import renamed): a run id hashes the code of ``lib.store.RESULT_SOURCES``, so such a change retrains everything;
this gives every checkpoint trained by the code at OLD a copy under the run id today's code gives its spec, but
only after checking that the two codes train bit-identical models.

    .venv/bin/python tools/carry_cache.py OLD [--cache DIR] [--check-only]

The check comes first and decides: in two empty caches, the code at OLD (a git worktree) and today's code each
train the same smoke-sized runs, one of every kind the notebooks train (BCE, MSE and L1 with a weight, no KL, the
BetaVAE, the GAN, noisy data, a denoising VAE, bf16, and a constant-lr run continued from a shorter one); every
tensor, history number and grid of every checkpoint must be equal (the epoch times aside), or nothing is carried.
The check runs on the CPU, so only runs of a model and precision it trained are carried (a checkpoint does not say
which device trained it: a cache trained on a GPU needs the check run there). A checkpoint already under its new id
is left alone, nothing is deleted, and score memos are not carried: today's code computes them again (and so
re-derives every number of the report from the carried weights).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib import store  # noqa: E402
from lib.data import DEFAULT_ROOT  # noqa: E402

SMOKE = dict(train_subset=256, test_subset=256, batch_size=64, epochs=2, lr=3e-3, lr_schedule="cosine",
             adam_betas=[0.9, 0.99])
CHECK_SPECS = [  # one of every kind of run the notebooks train; RunSpec fields
    dict(SMOKE, tag="carry-bce"),
    dict(SMOKE, tag="carry-mse-w", recon="mse", recon_weight=3.1),
    dict(SMOKE, tag="carry-l1-w", recon="l1", recon_weight=1.75),
    dict(SMOKE, tag="carry-nokl", beta=0.0),
    dict(SMOKE, tag="carry-beta", model="BetaVAE", latent_dim=10, beta=2.0, lr=1e-3, lr_schedule="constant",
         adam_betas=[0.9, 0.999]),
    dict(SMOKE, tag="carry-gan", model="GAN", latent_dim=100, lr=1e-3, lr_schedule="constant", adam_betas=[0.5, 0.999]),
    dict(SMOKE, tag="carry-noisy", noise_amount=0.1, seed=1),
    dict(SMOKE, tag="carry-denoise", noise_amount=0.8, denoise=True),
    dict(SMOKE, tag="carry-bf16", precision="bf16", epochs=1),
    dict(SMOKE, tag="carry-const", lr_schedule="constant", epochs=1),
    dict(SMOKE, tag="carry-const", lr_schedule="constant", epochs=2),  # continues the 1-epoch run above
]
# Run in a checkout (OLD's worktree or this one): trains the specs read from stdin into GENMNIST_CACHE, or (with
# "ids") only prints their run ids; prints a JSON list of run ids.
RUNNER = """
import json, sys
import lib
from lib.train import RunSpec, fit
assert lib.__file__.startswith(sys.argv[2]), f"imported {lib.__file__}, not the code in {sys.argv[2]}"
specs = [RunSpec(**{**s, "adam_betas": tuple(s["adam_betas"])}) for s in json.load(sys.stdin)]
if sys.argv[1] == "train":
    for s in specs:
        fit(s, device="cpu", show_progress=False)
print(json.dumps([s.run_id for s in specs]))
"""


def run_in(checkout: Path, specs: list[dict], mode: str, cache: Path | None = None) -> list[str]:
    """The run ids the code in ``checkout`` gives ``specs`` (training them into ``cache`` first when mode is 'train')."""
    env = {**os.environ, "MNIST_ROOT": str(DEFAULT_ROOT), "CI": "1", "GENMNIST_ROOT": str(checkout),
           **({"GENMNIST_CACHE": str(cache)} if cache else {})}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(checkout)!r})\n{RUNNER}", mode, str(checkout)],
                       input=json.dumps(specs), cwd=checkout, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"carry_cache: the code in {checkout} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def differences(a, b, where: str = "") -> list[str]:
    """Where two checkpoint states differ: tensors bit for bit, numbers exactly, the epoch times and run ids aside."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where or "tensor"]
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - {"train_seconds", "run_id"}
        return [d for k in sorted(keys, key=str) for d in differences(a.get(k), b.get(k), f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} (length {len(a)} vs {len(b)})"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where} ({a!r} vs {b!r})"]


def check(old: Path, work: Path) -> None:
    """Train CHECK_SPECS with both codes into empty caches and compare every checkpoint; exit when one differs."""
    ids = {}
    for name, checkout in (("old", old), ("new", ROOT)):
        print(f"training {len(CHECK_SPECS)} smoke runs with the {name} code ({checkout})", flush=True)
        ids[name] = run_in(checkout, CHECK_SPECS, "train", work / f"cache-{name}")
    bad = []
    for spec, old_id, new_id in zip(CHECK_SPECS, ids["old"], ids["new"], strict=True):
        a, b = (torch.load(store.checkpoint_path(i, work / f"cache-{n}"), map_location="cpu", weights_only=True)
                for i, n in ((old_id, "old"), (new_id, "new")))
        found = differences(a, b)
        print(f"  {spec['tag']} ({spec['epochs']} epochs): {'bit-identical' if not found else 'DIFFERS: ' + found[0]}")
        bad += found
    if bad:
        raise SystemExit(f"carry_cache: the two codes train different models ({len(bad)} differences); "
                         "nothing carried: retrain instead")


def kind(spec: dict) -> tuple[str, str]:
    """A spec's model and precision (RunSpec's defaults where a key is absent)."""
    return spec.get("model", "ConvVAE"), spec.get("precision", "fp32")


CHECKED = {kind(s) for s in CHECK_SPECS}


def carry(old: Path, cache: Path) -> tuple[int, int, int]:
    """Copy each checkpoint of ``cache`` whose run id is the one the old code gives its spec, and whose model and
    precision the check trained, to the new run id. Returns (carried, already there, left: trained by other code,
    unreadable, or of a kind the check did not train)."""
    paths, states = sorted(cache.glob("*/checkpoint.pt")), []
    for path in paths:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            spec = state["spec"]
        except Exception:  # noqa: BLE001 - unreadable, or no spec: not ours to carry
            continue
        if kind(spec) in CHECKED:
            states.append((path, state))
    left = len(paths) - len(states)
    specs = [s["spec"] for _, s in states]
    old_ids, new_ids = run_in(old, specs, "ids"), run_in(ROOT, specs, "ids")
    carried = there = 0
    for (path, state), old_id, new_id in zip(states, old_ids, new_ids, strict=True):
        if state.get("run_id") != old_id or path.parent.name != old_id:
            left += 1
            continue
        target = store.checkpoint_path(new_id, cache)
        with store.exclusive(target):  # a build training this very run waits, then finds it
            if target.exists():
                there += 1
                continue
            store.save_checkpoint(target, {**state, "run_id": new_id})
        carried += 1
    return carried, there, left


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", help="the commit whose code trained the cache's models")
    ap.add_argument("--cache", type=Path, default=store.CACHE, help=f"the model cache (default {store.CACHE})")
    ap.add_argument("--check-only", action="store_true", help="only check that the two codes train the same models")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="carry-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.old], cwd=ROOT, check=True)
        try:
            check(old, Path(tmp))
            if not args.check_only:
                carried, there, other = carry(old, args.cache)
                print(f"{args.cache}: {carried} checkpoints carried to today's run ids, {there} already there, "
                      f"{other} left as they are (trained by other code, unreadable, or of a kind not checked)")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
