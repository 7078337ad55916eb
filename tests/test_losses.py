import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from lib import losses


def _rand(seed=0, b=16, d=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g) * 2, torch.randn(b, d, generator=g)


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = _rand()
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = kl_divergence(q, p)
    torch.testing.assert_close(losses.gaussian_kl(mu, logvar, reduce=False), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses.gaussian_kl(mu, logvar), ref.sum(1).mean(), rtol=1e-5, atol=1e-5)


def test_kl_zero_at_prior():
    z = torch.zeros(4, 3)
    assert losses.gaussian_kl(z, z).item() == 0.0


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 1, 28, 28, generator=g)
    logits = torch.randn(8, 1, 28, 28, generator=g)
    mu, logvar = _rand(seed, 8, 5)
    return logits, x, mu, logvar


@pytest.mark.parametrize("name", ["bce", "mse", "l1"])
def test_elbo_beta1_is_recon_plus_kl(name):
    logits, x, mu, logvar = _batch()
    t = losses.elbo(logits, x, mu, logvar, recon=name)
    torch.testing.assert_close(t.loss, t.recon + t.kl)
    torch.testing.assert_close(t.kl, losses.gaussian_kl(mu, logvar))


def test_beta_scales_only_kl():
    logits, x, mu, logvar = _batch()
    t1 = losses.elbo(logits, x, mu, logvar, beta=1.0)
    t3 = losses.elbo(logits, x, mu, logvar, beta=3.0)
    torch.testing.assert_close(t3.recon, t1.recon)
    torch.testing.assert_close(t3.kl, t1.kl)
    torch.testing.assert_close(t3.loss - t1.loss, 2.0 * t1.kl)


def test_recon_terms_match_seed_formulas():
    """Sum over pixels / batch size == the course report's size_average=False sums divided by B."""
    logits, x, _, _ = _batch()
    p = torch.sigmoid(logits)
    b = x.shape[0]
    torch.testing.assert_close(losses.bce(logits, x), F.binary_cross_entropy(p, x, reduction="sum") / b)
    torch.testing.assert_close(losses.mse(logits, x), F.mse_loss(p, x, reduction="sum") / b)
    torch.testing.assert_close(losses.l1(logits, x), F.l1_loss(p, x, reduction="sum") / b)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown loss 'huber'.*\['bce', 'l1', 'mse'\]"):
        losses.get_recon_loss("huber")


def test_gan_losses_at_zero_logits_are_log2():
    z = torch.zeros(10, 1)
    assert losses.d_loss(z, z).item() == pytest.approx(math.log(2), rel=1e-6)
    assert losses.g_loss(z).item() == pytest.approx(math.log(2), rel=1e-6)


def test_gan_losses_match_seed_bceloss():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(7, 1, generator=g), torch.randn(7, 1, generator=g)
    bce = torch.nn.BCELoss()
    ones, zeros = torch.ones(7, 1), torch.zeros(7, 1)
    ref_d = (bce(torch.sigmoid(real), ones) + bce(torch.sigmoid(fake), zeros)) / 2
    torch.testing.assert_close(losses.d_loss(real, fake), ref_d)
    torch.testing.assert_close(losses.g_loss(fake), bce(torch.sigmoid(fake), ones))
