"""Likelihood bounds of a trained VAE in nats per image (summed over the 784 pixels, averaged over every
image given): the negative ELBO on a test set and the importance-weighted bound. Training logs ``test_bound``
after every epoch, so this module is part of what a run id hashes; the sample-quality metrics live in
``evaluate`` and do not retrain anything when they change."""
from __future__ import annotations

import math

import torch

from . import losses
from .progress import progress

EVAL_BATCH = 1000  # evaluation batches can be much larger than training ones (no backward)


def _per_image_terms(model, x, recon, generator, target=None):
    """Per-image reconstruction term of ``target`` (default x) and KL (one z ~ q(z|x) each), shape [B] each."""
    mu, logvar = model.encode(x)
    x_logits = model.decode_logits(model.reparameterize(mu, logvar, generator))
    per_recon = losses.get_recon_loss(recon)(x_logits, x if target is None else target, per_image=True)
    return per_recon, losses.gaussian_kl(mu, logvar, reduce=False).sum(1)


@torch.inference_mode()
def test_bound(model, x: torch.Tensor, recon: str = "bce", beta: float = 1.0, recon_weight: float = 1.0,
               generator: torch.Generator | None = None, batch_size: int = EVAL_BATCH,
               show_progress: bool = False, target: torch.Tensor | None = None) -> dict[str, float]:
    """Averages over **all** images of x (not a mean of batch means): ``recon`` = E_q[-log p(x|z)] (one z per
    image; with ``target``, a denoising VAE's clean images, -log p(target|z) with z ~ q(z|x)), ``kl`` = KL(q(z|x) || p(z)), ``bound`` = recon + kl (the negative ELBO, β = 1, comparable across β)
    and ``loss`` = recon_weight * recon + beta * kl (the training objective)."""
    was_training = model.training
    model.eval()
    tot_r = tot_k = 0.0
    starts = range(0, len(x), batch_size)
    for start in progress(starts, len(starts), "test bound", show_progress):
        t = None if target is None else target[start : start + batch_size]
        r, k = _per_image_terms(model, x[start : start + batch_size], recon, generator, t)
        tot_r += r.double().sum().item()
        tot_k += k.double().sum().item()
    model.train(was_training)
    rec, kl = tot_r / len(x), tot_k / len(x)
    return {"loss": recon_weight * rec + beta * kl, "recon": rec, "kl": kl, "bound": rec + kl}


@torch.inference_mode()
def log_weights(model, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                target: torch.Tensor | None = None) -> torch.Tensor:
    """log w_j = log p(x|z_j) + log p(z_j) - log q(z_j|x), z_j ~ q(z|x); Bernoulli decoder. Shape [B, k].
    With ``target`` (a denoising VAE's clean images) the first term is log p(target|z_j)."""
    mu, logvar = model.encode(x)
    b, d = mu.shape
    mu_k = mu.unsqueeze(1).expand(b, k, d).reshape(b * k, d)
    lv_k = logvar.unsqueeze(1).expand(b, k, d).reshape(b * k, d)
    z = model.reparameterize(mu_k, lv_k, generator)
    x_logits = model.decode_logits(z)
    y = x if target is None else target
    x_k = y.unsqueeze(1).expand(b, k, *y.shape[1:]).reshape(b * k, *y.shape[1:])
    log_px_z = -losses.bce(x_logits, x_k, per_image=True)
    log2pi = math.log(2 * math.pi)
    log_pz = -0.5 * (z.pow(2) + log2pi).sum(1)
    log_qz = -0.5 * ((z - mu_k).pow(2) / lv_k.exp() + lv_k + log2pi).sum(1)
    return (log_px_z + log_pz - log_qz).view(b, k)


@torch.inference_mode()
def iwae_bound(model, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
               chunk_decodes: int = 20_000, per_image: bool = False, show_progress: bool = True,
               target: torch.Tensor | None = None):
    """Negative importance-weighted bound -log (1/k) sum_j w_j (Burda et al. 2016), one k-sample estimate per
    image: their mean in nats per image, or with ``per_image=True`` the [N] tensor (double, on the CPU) for
    measuring Monte-Carlo error. ``target``: as in ``log_weights``. k = 1 is the single-sample ELBO estimate; the bound tightens as k grows."""
    was_training = model.training
    model.eval()
    per_batch = max(1, chunk_decodes // k)
    starts = range(0, len(x), per_batch)
    out = []
    for start in progress(starts, len(starts), f"IWAE bound (k={k})", show_progress):
        t = None if target is None else target[start : start + per_batch]
        lw = log_weights(model, x[start : start + per_batch], k, generator, t)
        out.append(-(torch.logsumexp(lw.double(), dim=1) - math.log(k)).cpu())
    model.train(was_training)
    values = torch.cat(out)
    return values if per_image else values.mean().item()
