"""Choose the ConvVAE tiers' learning rate and schedule on a validation split, never on the test set.

Trains the BCE ConvVAE of 01_vae_basic (default profile, seed 0) on the first 55,000 training images for each
candidate (learning rate, schedule) and scores the negative ELBO on the held-out last 5,000 training images.
Writes bench/lr_choice.json and prints a table; `harness.config._VAE` holds the choice. Rows of earlier runs at
another epoch count stay in the file (``earlier``), so the cost of a shorter budget can be read there.

    .venv/bin/python tools/choose_lr.py [--epochs N]   # default: the default profile's epochs

Run it alone (it takes every core for minutes; make report and make bench must not run at the same time).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lib import data
from lib.bounds import test_bound
from harness.config import VALIDATION_IMAGES as VALIDATION, resolve, resolve_precision, set_threads
from lib.data import generator
from builder.report import environment
from lib.store import source_hash
from lib.train import RunSpec, fit

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = [(1e-3, "constant"), (2e-3, "cosine"), (3e-3, "cosine"), (5e-3, "cosine")]  # the course report's, then cosines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    epochs = resolve("01_vae_basic", "default")["epochs"]
    ap.add_argument("--epochs", type=int, default=epochs, help=f"training epochs per candidate (default profile: {epochs})")
    args = ap.parse_args()
    threads = set_threads()
    train = data.load_split("train").float_images("cpu")
    val = train[-VALIDATION:]
    rows = []
    for lr, schedule in CANDIDATES:
        spec = RunSpec(tag=f"lr-choice-{lr:g}-{schedule}", epochs=args.epochs, batch_size=64, lr=lr, lr_schedule=schedule,
                       latent_dim=32, train_subset=len(train) - VALIDATION, precision=resolve_precision("auto", torch.device("cpu")))
        t0 = time.perf_counter()
        run = fit(spec, device=torch.device("cpu"))
        bound = test_bound(run.model, val, "bce", generator=generator(4))["bound"]
        rows.append({"lr": lr, "schedule": schedule, "epochs": args.epochs, "validation_bound": round(bound, 3),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"lr {lr:g} {schedule:8s}: validation -ELBO {bound:.2f} nats ({rows[-1]['seconds']:.0f} s)", flush=True)
    best = min(rows, key=lambda r: r["validation_bound"])
    path = ROOT / "bench" / "lr_choice.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    earlier = [r for r in old.get("earlier", []) + old.get("candidates", []) if r["epochs"] != args.epochs]
    out = {"candidates": rows, "chosen": best, "validation_images": VALIDATION, "threads": threads,
           "cpu": environment()["cpu"], "training_code": source_hash(), "earlier": earlier}
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"chosen: lr {best['lr']:g} {best['schedule']}")


if __name__ == "__main__":
    main()
