import pytest
import torch

from lib.models import BetaVAE, ConvVAE, Discriminator, Generator, count_parameters, standard_normal


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def _lin(i, o):
    return i * o + o


def _bn(c):
    return 2 * c


# Parameter counts written out from the course report's layer list (not from our modules).
SEED_CONV_VAE = (
    _conv(1, 64, 4) + _bn(64) + _conv(64, 128, 4) + _bn(128) + _conv(128, 128, 3) + _bn(128)
    + 2 * _lin(128 * 7 * 7, 32) + _lin(32, 128 * 7 * 7)
    + (128 * 64 * 16 + 64) + (64 * 1 * 16 + 1)  # ConvTranspose2d weights are [in, out, k, k]
)
SEED_BETA_VAE = (
    _conv(1, 8, 3) + _conv(8, 16, 3) + _conv(16, 32, 3) + _lin(288, 128) + 2 * _lin(128, 10)
    + _lin(10, 128) + _lin(128, 288) + (32 * 16 * 9 + 16) + (16 * 8 * 9 + 8) + (8 * 1 * 9 + 1)
    + _bn(16)  # the course report's single shared BatchNorm2d(16)
)
SEED_GENERATOR = (
    _lin(100, 128) + _lin(128, 256) + _bn(256) + _lin(256, 512) + _bn(512) + _lin(512, 1024) + _bn(1024)
    + _lin(1024, 784)
)
SEED_DISCRIMINATOR = _lin(784, 512) + _lin(512, 256) + _lin(256, 1)


def test_parameter_counts_match_the_seed():
    assert count_parameters(ConvVAE()) == SEED_CONV_VAE == 1_021_121
    # +32: the encoder and decoder each get their own BatchNorm2d(16) (seed bug fixed).
    assert count_parameters(BetaVAE()) == SEED_BETA_VAE + _bn(16)
    assert count_parameters(Generator()) == SEED_GENERATOR
    assert count_parameters(Discriminator()) == SEED_DISCRIMINATOR


def _shapes(module, x, names):
    seen = {}
    hooks = [
        dict(module.named_modules())[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, tuple(o.shape)))
        for n in names
    ]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return seen


def test_conv_vae_layer_shapes_follow_the_seed_comments():
    m = ConvVAE().eval()
    s = _shapes(m, torch.rand(2, 1, 28, 28), ["encoder.0", "encoder.3", "encoder.6", "get_mu", "get_logvar",
                                              "get_temp", "decoder.0", "decoder.2"])
    assert s == {
        "encoder.0": (2, 64, 14, 14), "encoder.3": (2, 128, 7, 7), "encoder.6": (2, 128, 7, 7),
        "get_mu": (2, 32), "get_logvar": (2, 32), "get_temp": (2, 128 * 7 * 7),
        "decoder.0": (2, 64, 14, 14), "decoder.2": (2, 1, 28, 28),
    }


def test_conv_vae_runs_the_encoder_once():
    m = ConvVAE()
    calls = []
    m.encoder.register_forward_hook(lambda *a: calls.append(1))
    m(torch.rand(3, 1, 28, 28))
    assert len(calls) == 1


def test_beta_vae_layer_shapes_follow_the_seed_comments():
    m = BetaVAE().eval()
    names = ["enc_conv1", "enc_conv2", "enc_conv3", "enc_fc1", "enc_mean", "enc_std",
             "dec_fc1", "dec_fc2", "dec_convt1", "dec_convt2", "dec_convt3"]
    s = _shapes(m, torch.rand(2, 1, 28, 28), names)
    assert s == {
        "enc_conv1": (2, 8, 14, 14), "enc_conv2": (2, 16, 7, 7), "enc_conv3": (2, 32, 3, 3),
        "enc_fc1": (2, 128), "enc_mean": (2, 10), "enc_std": (2, 10),
        "dec_fc1": (2, 128), "dec_fc2": (2, 288), "dec_convt1": (2, 16, 7, 7),
        "dec_convt2": (2, 8, 14, 14), "dec_convt3": (2, 1, 28, 28),
    }


def test_gan_shapes_and_ranges():
    g, d = Generator().eval(), Discriminator()
    img = g(torch.randn(5, 100))
    assert img.shape == (5, 1, 28, 28)
    assert img.min() >= -1 and img.max() <= 1
    assert d(img).shape == (5, 1)
    s = g.sample(4, generator=torch.Generator().manual_seed(0))
    assert s.min() >= 0 and s.max() <= 1


@pytest.mark.parametrize("cls", [ConvVAE, BetaVAE])
def test_vae_interface(cls):
    m = cls().eval()
    x = torch.rand(4, 1, 28, 28)
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (4, m.latent_dim)
    assert torch.isfinite(logvar).all()
    logits, mu2, _ = m(x)
    assert logits.shape == x.shape
    torch.testing.assert_close(mu, mu2)
    a = m.sample(6, generator=torch.Generator().manual_seed(1))
    b = m.sample(6, generator=torch.Generator().manual_seed(1))
    assert a.shape == (6, 1, 28, 28) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_reparameterize_is_mu_plus_sigma_eps():
    mu, logvar = torch.full((20000, 1), 2.0), torch.full((20000, 1), 2 * torch.log(torch.tensor(3.0)))
    z = ConvVAE.reparameterize(mu, logvar, torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 2.0) < 0.1 and abs(z.std().item() - 3.0) < 0.1


def test_standard_normal_draws_from_the_given_generator_only():
    """With a generator, the noise depends on it alone: torch's global generator is neither read nor advanced."""
    like = torch.zeros(1, dtype=torch.float64)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    a = standard_normal((3, 4), like, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(2)
    b = standard_normal((3, 4), like, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.dtype == torch.float64 and a.shape == (3, 4)
    assert not torch.equal(a, standard_normal((3, 4), like, torch.Generator().manual_seed(6)))
