"""CUDA check of the lib path: run on a machine with an NVIDIA GPU.

    python tools/cuda_check.py [--out cuda_check.json]

What it checks (each a real property; the script exits 1 if any fails):

1. ``device="auto"`` resolves to CUDA and ``precision="auto"`` to bf16 where the GPU supports it.
2. ``run_data`` keeps the train and test tensors on the GPU; ``train.fit`` trains every model
   (ConvVAE, BetaVAE, GAN) there with finite losses, the parameters stay on the GPU, the
   checkpoint (which carries its run id) loads on a CPU-only reader and a second call is a cache hit.
3. CPU and GPU agree: the same weights give the same encoder / decoder outputs (fp32, TF32 off) and
   the same reconstruction loss at z = mu; one epoch of fp32 training on 2,048 images from the same
   seed ends at test bounds within 5 % (the GPU draws its own noise stream, so they are not equal;
   seeds 0, 1 and 2 on the CPU span 4 %).
4. Evaluation runs on the GPU: test bound, IWAE bound (``lib.bounds``) and the classifier FID, the
   FID equal to the CPU's for the same classifier weights.
6. Two trainings of the same spec give bit-identical histories (harness.config.deterministic_cuda).
7. The CUDA path (``lib.train``'s speed section): a captured graph draws the same noise as eager code
   from a reseeded generator; one epoch of each family with CUDA graphs matches the same epoch launched op
   by op (``GENMNIST_CUDA_GRAPHS=0``) within 1e-3 relative on every logged number (bit-identical where the
   kernels are); a run killed after epoch 1 resumes to the uninterrupted run's weights, bit for bit.
8. Speed, recorded (``--out``): ``epoch_seconds`` per family at the default profile's settings (60,000
   images, batch 64; the second epoch, after the capture), graphed and eager; runs trained together by
   ``fit_many`` (seconds per model-epoch, wall clock over the whole call, evaluation and checkpoints
   included); with ``--full-arm``, one arm of the full profile (3 training seeds x 250 epochs) end to end,
   and the full profile's estimate from these numbers (``builder.report.model_epochs``).

Nothing here runs in CI (CI has no GPU); ``make test`` covers the CPU path.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from harness import config, notebook as hnotebook  # noqa: E402
from lib import bounds, data, evaluate, models, train  # noqa: E402
from lib.data import generator  # noqa: E402

RESULTS: list[dict] = []


def check(name: str, ok: bool, **info) -> bool:
    RESULTS.append({"check": name, "ok": bool(ok), **info})
    print(f"[{'ok' if ok else 'FAIL'}] {name} {json.dumps(info, default=str)}", flush=True)
    return ok


def on(t: torch.Tensor, dev: torch.device) -> bool:
    return t.device.type == dev.type


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--device", default="auto", help="'auto' (the check) or 'cpu' (to develop this script)")
    ap.add_argument("--full-arm", action="store_true", help="also train 3 seeds x 250 epochs (minutes on an H200)")
    ap.add_argument("--speed-only", action="store_true", help="skip checks 2-6 (a rerun of the speed part)")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = config.resolve_device(args.device)
    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(info), flush=True)
    if args.device == "auto":
        check("device auto resolves to cuda", dev.type == "cuda", resolved=str(dev))
    prec = config.resolve_precision("auto", dev)
    check("precision auto", prec in ("bf16", "fp32"), resolved=prec)
    cpu = torch.device("cpu")
    cache = Path(tempfile.mkdtemp(prefix="cuda-check-"))

    if not args.speed_only:
        checks_2_to_6(dev, prec, cache)
    speed = cuda_path(dev, prec, cache, args.full_arm) if dev.type == "cuda" else {}

    failed = [r["check"] for r in RESULTS if not r["ok"]]
    print(f"{len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed" + (f"; FAILED: {failed}" if failed else ""))
    if args.out:  # the schema of report/cuda_check.json, which make report's estimate reads
        record = {"what": "tools/cuda_check.py" + (" --full-arm" if args.full_arm else ""),
                  "date": time.strftime("%Y-%m-%d"),
                  "machine": {"gpu": info["gpu"], "torch": info["torch"], "cuda": info["cuda"],
                              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                              "python": platform.python_version()},
                  **{k: v for k, v in speed.items()}, "cuda_check": RESULTS}
        Path(args.out).write_text(json.dumps(record, indent=1, default=str))
    return 1 if failed else 0


def checks_2_to_6(dev: torch.device, prec: str, cache: Path) -> None:
    cpu = torch.device("cpu")
    # 2. every model trains on the device, data and parameters stay there ----------------
    base = dict(epochs=1, train_subset=2048, test_subset=512, seed=0)
    spec = train.RunSpec(tag="cc-conv", model="ConvVAE", precision=prec, lr_schedule="cosine", lr=3e-3, **base)
    tr_x, te_x, _, _ = train.run_data(spec, dev)
    check("run_data keeps data on the device", on(tr_x, dev) and on(te_x, dev), train=str(tr_x.device))
    for s in (spec,
              train.RunSpec(tag="cc-beta", model="BetaVAE", latent_dim=10, beta=2.0, **base),
              train.RunSpec(tag="cc-gan", model="GAN", latent_dim=100, adam_betas=(0.5, 0.999), precision=prec,
                            **base)):
        t0 = time.perf_counter()
        run = train.fit(s, device=dev, cache=cache, show_progress=False)
        secs = time.perf_counter() - t0
        row = run.history[-1]
        finite = all(torch.isfinite(torch.tensor(float(v))) for v in row.values())
        params_on = all(on(p, dev) for p in run.model.parameters())
        check(f"{s.model} trains on the device", finite and params_on and run.trained_epochs == 1,
              seconds=round(secs, 2), last=row)
        state = torch.load(train.checkpoint_path(s.run_id, cache), map_location="cpu", weights_only=True)
        key = "G" if s.model == "GAN" else "model"
        check(f"{s.model} checkpoint loads on the CPU", all(v.device.type == "cpu" for v in state[key].values())
              and state["run_id"] == s.run_id)
        again = train.fit(s, device=dev, cache=cache, show_progress=False)
        check(f"{s.model} second call is a cache hit", again.trained_epochs == 0 and again.resumed_from == 1)

    # 3. CPU and device agree ----------------------------------------------------------------
    torch.manual_seed(0)
    m_cpu = models.ConvVAE(latent_dim=32).eval()
    m_dev = models.ConvVAE(latent_dim=32).to(dev).eval()
    m_dev.load_state_dict(m_cpu.state_dict())
    x = data.load_split("test").float_images("cpu")[:512]
    with torch.inference_mode():
        mu_c, lv_c = m_cpu.encode(x)
        mu_d, lv_d = m_dev.encode(x.to(dev))
        z = torch.randn(256, 32, generator=generator(5))
        img_c, img_d = m_cpu.decode(z), m_dev.decode(z.to(dev))
    d_enc = max((mu_c - mu_d.cpu()).abs().max().item(), (lv_c - lv_d.cpu()).abs().max().item())
    d_dec = (img_c - img_d.cpu()).abs().max().item()
    check("encoder agrees CPU vs device (fp32)", d_enc < 1e-3, max_abs_diff=d_enc)
    check("decoder agrees CPU vs device (fp32)", d_dec < 1e-4, max_abs_diff=d_dec)
    # the device draws its own noise stream, so compare the deterministic part: reconstruction at z = mu
    with torch.inference_mode():
        rc = torch.nn.functional.binary_cross_entropy_with_logits(m_cpu.decode_logits(mu_c), x, reduction="sum")
        rd = torch.nn.functional.binary_cross_entropy_with_logits(m_dev.decode_logits(mu_d), x.to(dev),
                                                                  reduction="sum")
    rel = abs(rc.item() - rd.item()) / abs(rc.item())
    check("reconstruction loss at z = mu agrees", rel < 1e-4, cpu=rc.item() / 512, device=rd.item() / 512)
    test_bounds = {}
    for d in (cpu, dev):
        s = train.RunSpec(tag=f"cc-agree-{d.type}", model="ConvVAE", precision="fp32", **base)
        r = train.fit(s, device=d, cache=cache, show_progress=False)
        test_bounds[d.type] = r.history[-1]["test_bound"]
    rel = abs(test_bounds["cpu"] - test_bounds[dev.type]) / test_bounds["cpu"]
    check("one fp32 epoch: CPU and device test bounds within 5 %", rel < 0.05, **test_bounds, rel=rel)

    # 4. evaluation on the device ------------------------------------------------------------
    run = train.fit(spec, device=dev, cache=cache, show_progress=False)
    tx = data.load_split("test").float_images(dev)[:1000]
    t0 = time.perf_counter()
    tb = bounds.test_bound(run.model, tx, "bce", generator=generator(4, dev))
    t_tb = time.perf_counter() - t0
    t0 = time.perf_counter()
    iw = bounds.iwae_bound(run.model, tx, 100, generator=generator(6, dev), show_progress=False)
    t_iw = time.perf_counter() - t0
    check("test bound and IWAE on the device", iw <= tb["bound"] + 1.0 and iw > 0,
          bound=tb["bound"], iwae_k100=iw, seconds=[round(t_tb, 2), round(t_iw, 2)])
    clf_d, acc = evaluate.get_classifier("smoke", device=dev, cache=cache, show_progress=False)
    clf_c = evaluate.Classifier()
    clf_c.load_state_dict({k: v.cpu() for k, v in clf_d.state_dict().items()})
    clf_c.eval()
    samples = data.to_uint8(run.model.sample(1000, generator=generator(7, dev)))
    test_u8 = data.to_uint8(tx)
    fid_d = evaluate.classifier_fid(clf_d, samples, test_u8)
    fid_c = evaluate.classifier_fid(clf_c, samples, test_u8)
    check("classifier FID on the device equals the CPU's", abs(fid_d - fid_c) <= 1e-3 * max(1.0, fid_c),
          device=fid_d, cpu=fid_c, classifier_accuracy=acc)

    # 6. bit-reproducible: the same spec trained twice from scratch gives identical numbers ---------
    for s in (train.RunSpec(tag="cc-rep-beta", model="BetaVAE", latent_dim=10, beta=2.0, **base),
              train.RunSpec(tag="cc-rep-conv", model="ConvVAE", precision=prec, **base)):
        rows = [train.fit(s, device=dev, cache=Path(tempfile.mkdtemp(prefix="cuda-rep-")),
                          show_progress=False).history[-1] for _ in range(2)]
        same = {k: v for k, v in rows[0].items() if k != "train_seconds"} == \
               {k: v for k, v in rows[1].items() if k != "train_seconds"}
        check(f"{s.model} ({s.precision}) trained twice: identical history", same,
              first=rows[0]["test_bound"], second=rows[1]["test_bound"])



def default_spec(notebook: str, model: str, prec: str, **changes) -> train.RunSpec:
    """The RunSpec the notebook's default profile trains (harness.config + harness.notebook.spec_from)."""
    cfg = config.resolve(notebook, "default")
    cfg["precision"] = prec
    extra = {"GAN": dict(adam_betas=(0.5, 0.999))}.get(model, {})
    return hnotebook.spec_from(cfg, f"cc-{model.lower()}", model=model, **{**extra, **changes})


def strip(history):
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in history]


def max_rel(a, b) -> float:
    return max(abs(x[k] - y[k]) / max(abs(x[k]), 1e-12) for x, y in zip(a, b) for k in x
               if isinstance(x[k], float))


def graphs(on: bool) -> None:
    os.environ["GENMNIST_CUDA_GRAPHS"] = "1" if on else "0"


def fresh() -> Path:
    return Path(tempfile.mkdtemp(prefix="cuda-fast-"))


def cuda_path(dev: torch.device, prec: str, cache: Path, full_arm: bool) -> dict:
    """Checks and timings of lib.train's CUDA path (module docstring, 7 and 8)."""
    torch.backends.cudnn.allow_tf32 = True  # torch's default, as the notebooks run (check 3 turned it off)
    speed: dict = {"settings": "the default profile's (harness.config), 60,000 training images, batch 64; "
                               f"precision {prec} for ConvVAE and GAN, fp32 for BetaVAE"}
    # a graph replay draws what eager code draws from a reseeded, registered generator
    g = torch.Generator(device=dev)
    g.manual_seed(11)
    out = torch.empty(5, device=dev)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(g)
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        out.copy_(torch.randn(5, device=dev, generator=g))
    draws = []
    for seed in (3, 3, 4):
        g.manual_seed(seed)
        graph.replay()
        first = out.clone()
        graph.replay()
        draws.append((first, out.clone()))
    eager = []
    for seed in (3, 4):
        g.manual_seed(seed)
        eager.append((torch.randn(5, device=dev, generator=g), torch.randn(5, device=dev, generator=g)))
    same = all(torch.equal(a, b) for a, b in zip(draws[0] + draws[2], eager[0] + eager[1]))
    check("graph replay draws the eager noise of a reseeded generator", same and torch.equal(draws[0][0], draws[1][0])
          and not torch.equal(draws[0][0], draws[0][1]))

    families = {"ConvVAE": ("01_vae_basic", prec), "GAN": ("03_gan", prec), "BetaVAE": ("04_beta_vae", "fp32")}
    # one epoch graphed vs op by op, on 8,192 images (128 steps)
    for model, (nb, p) in families.items():
        s = default_spec(nb, model, p, epochs=1, train_subset=8192, test_subset=1000)
        rows = {}
        for on in (True, False):
            graphs(on)
            rows[on] = train.fit(s, device=dev, cache=fresh(), show_progress=False).history
        graphs(True)
        rel = max_rel(strip(rows[True]), strip(rows[False]))
        check(f"{model}: one epoch with CUDA graphs matches op by op (rel 1e-3)", rel <= 1e-3, max_rel=rel,
              bit_identical=strip(rows[True]) == strip(rows[False]), graphed=strip(rows[True])[0])

    # resume: killed after epoch 1, resumed, equals the uninterrupted run
    s = default_spec("01_vae_basic", "ConvVAE", prec, epochs=2, train_subset=8192, test_subset=1000)
    whole = train.fit(s, device=dev, cache=fresh(), show_progress=False)
    c = fresh()

    def stop(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt
    try:
        train.fit(s, device=dev, cache=c, show_progress=False, on_epoch_end=stop)
    except KeyboardInterrupt:
        pass
    resumed = train.fit(s, device=dev, cache=c, show_progress=False)
    same_w = all(torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()))
    check("graphed run killed after epoch 1 resumes to the uninterrupted weights", same_w and resumed.resumed_from == 1
          and strip(whole.history) == strip(resumed.history))

    # epoch seconds at the default settings: graphed (epoch 2) and op by op (epoch 1)
    speed["epoch_seconds"] = {}
    for model, (nb, p) in families.items():
        graphs(True)
        r = train.fit(default_spec(nb, model, p, epochs=2), device=dev, cache=fresh(), show_progress=False)
        graphs(False)
        e = train.fit(default_spec(nb, model, p, epochs=1), device=dev, cache=fresh(), show_progress=False)
        graphs(True)
        rec = {"graphed": round(r.history[1]["train_seconds"], 3),
               "graphed_first_epoch_with_capture": round(r.history[0]["train_seconds"], 3),
               "eager": round(e.history[0]["train_seconds"], 3)}
        speed["epoch_seconds"][model] = rec
        check(f"{model} epoch at the default settings <= 1.0 s", rec["graphed"] <= 1.0, **rec)

    # several runs together (fit_many): wall seconds per model-epoch, evaluation and checkpoints included
    speed["together"], alone = [], {}
    for model, k, epochs in (("ConvVAE", 1, 2), ("ConvVAE", 3, 2), ("ConvVAE", 9, 2), ("ConvVAE", 18, 2),
                             ("GAN", 1, 2), ("GAN", 3, 2), ("BetaVAE", 1, 2), ("BetaVAE", 12, 2)):
        nb, p = families[model]
        specs = [default_spec(nb, model, p, epochs=epochs, seed=i) for i in range(k)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            runs = train.fit_many(specs, device=dev, cache=fresh(), show_progress=False)
        except train.TrainingError as e:
            check(f"fit_many: {k} {model} runs together", False, error=str(e))
            continue
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        alone.setdefault(model, runs[0].history)  # the first group of a family: seed 0 trained alone or first
        same = strip(runs[0].history) == strip(alone[model])
        speed["together"].append({"model": model, "runs": k, "epochs": epochs, "wall_seconds": round(wall, 2),
                                  "seconds_per_model_epoch": round(wall / (k * epochs), 3)})
        check(f"fit_many: {k} {model} runs together, seed 0 as trained alone", same, **speed["together"][-1])

    if full_arm:  # one arm of the full profile end to end: the BCE model's 3 training seeds x 250 epochs
        cfg = config.resolve("01_vae_basic", "full")
        cfg["precision"] = prec
        specs = [hnotebook.spec_from(cfg, "cc-full-bce", recon="bce", seed=s) for s in range(3)]
        t0 = time.perf_counter()
        runs = train.fit_many(specs, device=dev, cache=fresh(), show_progress=True)
        wall = time.perf_counter() - t0
        speed["full_arm"] = {"what": "01's BCE arm in the full profile: 3 training seeds x 250 epochs, fit_many",
                             "wall_seconds": round(wall, 1), "seconds_per_model_epoch": round(wall / 750, 3),
                             "test_bounds": [r.history[-1]["test_bound"] for r in runs]}
        check("full-profile arm trained (3 x 250 epochs)", all(len(r.history) == 250 for r in runs),
              **speed["full_arm"])
    speed["full_profile_estimate"] = estimate(speed)
    print(json.dumps(speed["full_profile_estimate"]), flush=True)
    return speed


def estimate(speed: dict) -> dict:
    """The full profile's training time from the measured together-rates (builder.report.model_epochs)."""
    from builder.report import model_epochs

    work = model_epochs("full")
    rate = {}
    for row in speed.get("together", []):  # the best measured rate per family
        rate[row["model"]] = min(rate.get(row["model"], 1e9), row["seconds_per_model_epoch"])
    if "full_arm" in speed:
        rate["ConvVAE_full_arm"] = speed["full_arm"]["seconds_per_model_epoch"]
    parts = {m: round(work[m] * rate[m]) for m in work if m in rate}
    return {"model_epochs": work, "seconds_per_model_epoch": rate, "training_seconds": parts,
            "total_minutes": round(sum(parts.values()) / 60, 1)}


if __name__ == "__main__":
    sys.exit(main())
