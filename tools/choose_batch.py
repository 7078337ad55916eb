"""Choose the batch size and learning rate of the β-VAE and GAN tiers on a validation split, never on the test set.

The course report trained both with batch 64 and Adam lr 1e-3. Their networks are small, so a batch of 64 leaves most of
the CPU's time in per-step overhead: larger batches train an epoch in much less time (``make bench``). This tool
trains each candidate (batch, lr) on the first 55,000 training images, with the default profile's epochs and
seed 0, scores it on the held-out last 5,000 training images, and applies a rule fixed before any number was seen:

* a candidate is *acceptable* when its validation score is no worse than the course report's setting (batch 64,
  lr 1e-3) by more than the tolerance: 1 nat of −ELBO for the β-VAE (β = 1); for the GAN 7 FID points, twice the
  training-seed SD of the GAN's classifier-FID measured in the report (3.5);
* of the acceptable candidates the one with the shortest training time is chosen (the course report's setting is
  always acceptable, so there is always a choice).

The same rule answers a third question (``gan_epochs``): can the GAN, at the course report's batch and lr, train fewer
epochs than the default profile's 20 and score as well on the validation images?

Writes bench/batch_choice.json and prints a table; ``harness.config.PROFILES`` holds the choice (default profile;
the full profile keeps the course report's settings). Measured here (bench/batch_choice.json): neither net keeps its
quality at a larger batch within these budgets, so both kept batch 64.

    .venv/bin/python tools/choose_batch.py [--only betavae|gan|gan_epochs]

Run it alone (it takes every core for minutes, and its times decide; make report and make bench must not run).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lib import data, evaluate
from lib.bounds import test_bound
from harness.config import TRAIN_IMAGES, VALIDATION_IMAGES as VALIDATION, resolve, set_threads
from lib.data import generator
from builder.report import environment
from lib.store import source_hash
from harness.notebook import spec_from
from lib.train import fit

ROOT = Path(__file__).resolve().parent.parent
COURSE_SETTING = (64, 1e-3)
TIERS = {
    # name: (notebook, candidates (batch, lr), tolerance, what the score is)
    "betavae": ("04_beta_vae", [COURSE_SETTING, (256, 1e-3), (256, 2e-3), (256, 4e-3)], 1.0, "validation -ELBO (nats)"),
    "gan": ("03_gan", [COURSE_SETTING, (128, 1e-3), (256, 1e-3), (256, 2e-3)], 7.0, "validation classifier-FID"),
    # the course report's batch and lr, fewer epochs than the profile's 20 (candidates: (batch, lr, epochs))
    "gan_epochs": ("03_gan", [COURSE_SETTING, (64, 1e-3, 10), (64, 1e-3, 12)], 7.0, "validation classifier-FID"),
}


def score(name: str, cfg: dict, batch: int, lr: float, epochs: int, val: torch.Tensor, clf) -> tuple[float, float]:
    """(validation score, training seconds) of one candidate."""
    common = dict(batch_size=batch, lr=lr, epochs=epochs, train_subset=TRAIN_IMAGES - VALIDATION, seed=0)
    if name == "betavae":
        spec = spec_from(cfg, f"batch-choice-betavae-{batch}-{lr:g}", model="BetaVAE", beta=1.0, **common)
    else:
        spec = spec_from(cfg, f"batch-choice-gan-{batch}-{lr:g}" + (f"-{epochs}ep" if epochs != cfg["epochs"] else ""),
                         model="GAN", adam_betas=(0.5, 0.999), **common)
    run = fit(spec, device=torch.device("cpu"))
    seconds = sum(row["train_seconds"] for row in run.history)
    if name == "betavae":
        return test_bound(run.model, val, "bce", generator=generator(4))["bound"], seconds
    samples = evaluate.samples_of(run.model, cfg["n_samples"], 0)
    return evaluate.fid_and_se(clf, samples, evaluate.gaussian_stats(evaluate.features(clf, val)))[0], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(TIERS), action="append", help="one question (default: all)")
    args = ap.parse_args()
    threads = set_threads()
    val = data.load_split("train").float_images("cpu")[-VALIDATION:]
    clf = evaluate.get_classifier("full")[0]
    path = ROOT / "bench" / "batch_choice.json"
    out = json.loads(path.read_text()) if path.exists() else {}
    for name in args.only or sorted(TIERS):
        notebook, candidates, tolerance, what = TIERS[name]
        cfg = resolve(notebook, "default")
        rows = []
        for batch, lr, *epochs in candidates:
            epochs = epochs[0] if epochs else cfg["epochs"]
            value, seconds = score(name, cfg, batch, lr, epochs, val, clf)
            rows.append({"batch_size": batch, "lr": lr, "epochs": epochs, "score": round(value, 3),
                         "train_seconds": round(seconds, 1)})
            print(f"{name} batch {batch:4d} lr {lr:g} {epochs} epochs: {what} {value:.2f}, {seconds:.0f} s of training",
                  flush=True)
        course_score = rows[0]["score"]
        for r in rows:
            r["acceptable"] = r["score"] <= course_score + tolerance
        chosen = min((r for r in rows if r["acceptable"]), key=lambda r: r["train_seconds"])
        out[name] = {"notebook": notebook, "score": what, "tolerance": tolerance, "candidates": rows,
                     "chosen": chosen}
        print(f"{name}: chosen batch {chosen['batch_size']} lr {chosen['lr']:g}, {chosen['epochs']} epochs", flush=True)
        out[name].update({"threads": threads, "cpu": environment()["cpu"], "training_code": source_hash()})
    out.update({"validation_images": VALIDATION})
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
