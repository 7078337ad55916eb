import pytest
import torch

from lib.models import BetaVAE, ConvVAE, Discriminator, Generator, count_parameters


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def _lin(i, o):
    return i * o + o


def _bn(c):
    return 2 * c


# Parameter counts written out from the seed's layer list (not from our modules).
SEED_CONV_VAE = (
    _conv(1, 64, 4) + _bn(64) + _conv(64, 128, 4) + _bn(128) + _conv(128, 128, 3) + _bn(128)
    + 2 * _lin(128 * 7 * 7, 32) + _lin(32, 128 * 7 * 7)
    + (128 * 64 * 16 + 64) + (64 * 1 * 16 + 1)  # ConvTranspose2d weights are [in, out, k, k]
)
SEED_BETA_VAE = (
    _conv(1, 8, 3) + _conv(8, 16, 3) + _conv(16, 32, 3) + _lin(288, 128) + 2 * _lin(128, 10)
    + _lin(10, 128) + _lin(128, 288) + (32 * 16 * 9 + 16) + (16 * 8 * 9 + 8) + (8 * 1 * 9 + 1)
    + _bn(16)  # the seed's single shared BatchNorm2d(16)
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


def test_flatten_features_keeps_values_and_hands_back_a_channels_last_gradient():
    from lib.models import flatten_features, unflatten_features

    torch.manual_seed(0)
    base = torch.randn(4, 8, 3, 3)
    h = base.contiguous(memory_format=torch.channels_last).requires_grad_()
    ref = base.clone().requires_grad_()
    w = torch.randn(4, 72)
    y = flatten_features(h)
    assert torch.equal(y, ref.flatten(1))  # (C, H, W) order, as the seed's view(B, -1)
    (y * w).sum().backward()
    (ref.flatten(1) * w).sum().backward()
    assert torch.equal(h.grad, ref.grad)
    assert h.grad.is_contiguous(memory_format=torch.channels_last) and not h.grad.is_contiguous()
    conv_cl = torch.nn.Conv2d(8, 2, 3).to(memory_format=torch.channels_last)
    back = unflatten_features(y, (8, 3, 3), conv_cl)
    assert torch.equal(back, base) and back.is_contiguous(memory_format=torch.channels_last)
    assert unflatten_features(y, (8, 3, 3), torch.nn.Conv2d(8, 2, 3)).is_contiguous()


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("gemm_forward, gemm_weight_grad", [(True, True), (True, False), (False, True)])
def test_gemm_paths_of_the_k4s2_transposed_conv_are_exact(layout, gemm_forward, gemm_weight_grad):
    """The GEMM forward and the GEMM weight gradient compute the same sums as PyTorch's kernels:
    checked in float64, both layouts, a non-square map, fewer output than input channels."""
    from lib.models import _ConvTransposeK4S2

    torch.manual_seed(1)
    ref = torch.nn.ConvTranspose2d(6, 5, kernel_size=4, stride=2, padding=1).double().to(memory_format=layout)
    h0 = torch.randn(3, 6, 4, 5, dtype=torch.float64).contiguous(memory_format=layout)
    g = torch.randn(3, 5, 8, 10, dtype=torch.float64)
    h_ref = h0.clone().requires_grad_()
    y_ref = ref(h_ref)
    y_ref.backward(g)
    h = h0.clone().requires_grad_()
    w = ref.weight.detach().clone().requires_grad_()
    b = ref.bias.detach().clone().requires_grad_()
    y = _ConvTransposeK4S2.apply(h, w, b, gemm_forward, gemm_weight_grad)
    assert y.shape == y_ref.shape and torch.allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    y.backward(g)
    for got, want in ((w.grad, ref.weight.grad), (b.grad, ref.bias.grad), (h.grad, h_ref.grad)):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("c_in, c_out, gemm_forward, gemm_weight_grad", [(16, 8, False, True), (16, 1, True, False)])
def test_convvae_decoder_gemm_paths_run_under_cpu_bf16_only(c_in, c_out, gemm_forward, gemm_weight_grad):
    """The ConvVAE's two decoder layers as configured: under CPU bf16 autocast they take the GEMM
    path, with output and gradients as close to float64 as oneDNN's bf16 kernels get; in fp32, or
    with the flags off, they are PyTorch's layer exactly."""
    from lib.models import ConvTranspose2dK4S2

    dec = ConvVAE().decoder
    assert (dec[0].gemm_forward, dec[0].gemm_weight_grad, dec[2].gemm_forward, dec[2].gemm_weight_grad) == (
        False, True, True, False)
    torch.manual_seed(2)
    layer = ConvTranspose2dK4S2(c_in, c_out, gemm_forward=gemm_forward, gemm_weight_grad=gemm_weight_grad)
    layer = layer.to(memory_format=torch.channels_last)
    native = torch.nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
    native.load_state_dict(layer.state_dict())  # same parameters, same state dict
    h0 = torch.randn(4, c_in, 7, 7).contiguous(memory_format=torch.channels_last)
    g = torch.randn(4, c_out, 14, 14)
    exact = torch.nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1).double()
    exact.load_state_dict(layer.state_dict())
    h_exact = h0.double().requires_grad_()
    y_exact = exact(h_exact)
    y_exact.backward(g.double())
    want = (y_exact, exact.weight.grad, exact.bias.grad, h_exact.grad)

    def run(mod, bf16):
        mod.zero_grad()
        h = h0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = mod(h)
        path = type(y.grad_fn).__name__
        y.float().backward(g)
        return path, (y.detach(), mod.weight.grad.clone(), mod.bias.grad.clone(), h.grad)

    def err(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    path, got = run(layer, True)
    assert path.startswith("_ConvTransposeK4S2") and got[0].dtype == torch.bfloat16
    _, ref = run(native, True)
    for a, b, w in zip(got, ref, want):  # bf16-level, and no worse than oneDNN's bf16 kernels
        assert err(a, w) < 1e-2 and err(a, w) <= 1.5 * err(b, w) + 1e-6
    path32, got32 = run(layer, False)  # fp32: PyTorch's own path, identical to nn.ConvTranspose2d
    assert not path32.startswith("_ConvTransposeK4S2")
    for a, b in zip(got32, run(native, False)[1]):
        assert torch.equal(a, b)
    layer.gemm_forward = layer.gemm_weight_grad = False
    assert not run(layer, True)[0].startswith("_ConvTransposeK4S2")
