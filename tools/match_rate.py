"""Choose the reconstruction weights of 01_vae_basic's matched-rate comparison, on training images only.

The BCE, MSE and L1 models weight reconstruction against the same KL on different scales, so they end at
different rates (KL). For a like-for-like comparison, this finds for MSE and L1 the weight w in
``w * recon + KL`` whose model (default profile, seed 0, its epochs) has the BCE models' rate on the last
5,000 *training* images, within ``TOLERANCE`` nats: a secant search on log w (the rate grows roughly
linearly in log w). It never looks at the test set; the 5,000 images were seen in training (a rate is a
property of the fitted model, not a held-out score, so no split is held back). Writes bench/rate_match.json; `harness.config` holds the
chosen weights (``matched_weights``). The models it trains are the ones the notebook then loads from the
cache (same spec, same run id).

    .venv/bin/python tools/match_rate.py [--tries 4]

Run it alone (it takes every core for minutes; make report and make bench must not run at the same time).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from lib import data
from lib.bounds import test_bound
from harness.config import MATCHED_WEIGHTS, VALIDATION_IMAGES as VALIDATION, resolve, set_threads  # the rate is read there
from lib.data import generator
from builder.report import environment
from harness.notebook import arm_specs, spec_from
from lib.train import fit

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.5  # nats: tighter than the notebook's ±1 nat check, which is made on the test images
FIRST_GUESS = dict(MATCHED_WEIGHTS)  # start from the weights chosen last time (harness.config)


def rate(run, images, recon: str, weight: float) -> float:
    return test_bound(run.model, images, recon, recon_weight=weight, generator=generator(4))["kl"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tries", type=int, default=4, help="most weights tried per loss")
    args = ap.parse_args()
    if args.tries < 1:
        ap.error(f"--tries {args.tries} is invalid: allowed an integer >= 1")
    threads = set_threads()
    cfg = resolve("01_vae_basic", "default")
    dev = cfg["device"]
    val = data.load_split("train").float_images(dev)[-VALIDATION:]
    bce = [fit(spec, device=dev) for spec in arm_specs(cfg, "vae-bce", recon="bce")]
    target = sum(rate(r, val, "bce", 1.0) for r in bce) / len(bce)
    print(f"BCE rate on the last {VALIDATION:,} training images: {target:.2f} nats (mean of {len(bce)} seeds)", flush=True)
    out = {"target_rate": round(target, 3), "tolerance": TOLERANCE, "images": f"last {VALIDATION} training images",
           "threads": threads, "cpu": environment()["cpu"], "losses": {}}
    for loss in ("mse", "l1"):
        base = fit(spec_from(cfg, f"vae-{loss}", recon=loss), device=dev)  # w = 1: the comparison's own model
        points = [(1.0, rate(base, val, loss, 1.0))]
        w = FIRST_GUESS[loss]
        for _ in range(args.tries):
            t0 = time.perf_counter()
            run = fit(spec_from(cfg, f"vae-{loss}-w{w:g}", recon=loss, recon_weight=w), device=dev)
            points.append((w, rate(run, val, loss, w)))
            print(f"{loss} w={w:g}: rate {points[-1][1]:.2f} nats ({time.perf_counter() - t0:.0f} s)", flush=True)
            if abs(points[-1][1] - target) <= TOLERANCE:
                break
            (w0, r0), (w1, r1) = sorted(points, key=lambda p: abs(p[1] - target))[:2]  # the two nearest
            slope = (r1 - r0) / (math.log(w1) - math.log(w0))
            step = (target - r0) / slope if slope > 0 else math.log(2.0) * (1 if target > r0 else -1)
            new = w0 * math.exp(max(-1.5, min(1.5, step)))  # from the nearest point
            # a readable 2-digit tag, or 3 digits when the 2-digit weight was tried already
            w = next((c for c in (float(f"{new:.2g}"), float(f"{new:.3g}"))
                      if not any(abs(c - p[0]) < 1e-12 for p in points)), None)
            if w is None:
                break
        best = min(points[1:], key=lambda p: abs(p[1] - target))
        out["losses"][loss] = {"tried": [{"weight": p[0], "rate": round(p[1], 3)} for p in points],
                               "chosen": best[0], "rate": round(best[1], 3),
                               "within_tolerance": abs(best[1] - target) <= TOLERANCE}
        print(f"{loss}: chosen w={best[0]:g} (rate {best[1]:.2f})", flush=True)
    (ROOT / "bench" / "rate_match.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
