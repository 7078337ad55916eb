"""Loss terms as small free functions. Reductions are stated in each docstring.

All VAE terms are **summed over the 784 pixels (or latent dimensions) and averaged over the
batch**, i.e. nats per image — the course report's ``size_average=False`` sums divided by the batch size,
so numbers are comparable across batch sizes and with pytorch/examples' printed test loss.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F


def _reduce(per_image: torch.Tensor, per_image_out: bool) -> torch.Tensor:
    return per_image if per_image_out else per_image.mean()


def bce(x_logits: torch.Tensor, x: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Bernoulli negative log-likelihood -sum_i [x_i log p_i + (1-x_i) log(1-p_i)], p = sigmoid(logits);
    summed over pixels, averaged over the batch (nats per image); ``per_image=True`` gives shape [B]."""
    return _reduce(F.binary_cross_entropy_with_logits(x_logits, x, reduction="none").flatten(1).sum(1), per_image)


def mse(x_logits: torch.Tensor, x: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Squared error sum_i (sigmoid(logit_i) - x_i)^2, summed over pixels, averaged over the batch."""
    return _reduce((torch.sigmoid(x_logits) - x).pow(2).flatten(1).sum(1), per_image)


def l1(x_logits: torch.Tensor, x: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Absolute error sum_i |sigmoid(logit_i) - x_i|, summed over pixels, averaged over the batch."""
    return _reduce((torch.sigmoid(x_logits) - x).abs().flatten(1).sum(1), per_image)


RECON_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"bce": bce, "mse": mse, "l1": l1}


def get_recon_loss(name: str) -> Callable[..., torch.Tensor]:
    """Look up a reconstruction term by name; unknown names list the valid ones."""
    try:
        return RECON_LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; valid loss names: {sorted(RECON_LOSSES)}") from None


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """KL( N(mu, diag(exp(logvar))) || N(0, I) ) = 1/2 sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1):
    summed over latent dimensions and averaged over the batch, or with ``reduce=False`` shape [B, d]."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)
    return kl.sum(1).mean() if reduce else kl


class ELBOTerms(NamedTuple):
    """loss = recon_weight * recon + beta * kl  (the training objective, nats per image)."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def elbo(x_logits, x, mu, logvar, recon: str = "bce", beta: float = 1.0, recon_weight: float = 1.0) -> ELBOTerms:
    """Negative (β-)ELBO: recon_weight * E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z)), each per image and
    averaged over the batch. beta=1, recon_weight=1 is the plain VAE; beta is the β-VAE weight; beta=0 or
    recon_weight=0 are the course report's ablations."""
    r = get_recon_loss(recon)(x_logits, x)
    kl = gaussian_kl(mu, logvar)
    return ELBOTerms(recon_weight * r + beta * kl, r, kl)


# --- GAN: the course report's discriminator ends in Sigmoid and uses BCELoss; on logits the maths is the same ---

def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss (BCE(D(x), 1) + BCE(D(G(z)), 0)) / 2, each averaged over the batch; log 2 at zero logits."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return (real + fake) / 2


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss BCE(D(G(z)), 1) = -mean log D(G(z)); log 2 at zero logits."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
