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
6. Two trainings of the same spec give bit-identical histories (lib.config.deterministic_cuda).
7. Throughput, for information: ConvVAE training images/s on the GPU with the lib path (batch 64).

Nothing here runs in CI (CI has no GPU); ``make test`` covers the CPU path.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lib import bounds, config, data, evaluate, models, train  # noqa: E402
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

    # 7. throughput (information only) -------------------------------------------------------
    if dev.type == "cuda":
        full = train.RunSpec(tag="cc-speed", model="ConvVAE", precision=prec, epochs=1, seed=0)
        r = train.fit(full, device=dev, cache=cache, show_progress=False)
        secs = r.history[-1]["train_seconds"]
        check("ConvVAE epoch on the device (60,000 images)", True, seconds=round(secs, 2),
              images_per_s=round(60000 / secs), test_bound=r.history[-1]["test_bound"])

    failed = [r["check"] for r in RESULTS if not r["ok"]]
    print(f"{len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed" + (f"; FAILED: {failed}" if failed else ""))
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "results": RESULTS}, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
