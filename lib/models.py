"""The seed report's three architectures, layer for layer, with its bugs fixed.

Shape comments follow the seed's. Every decoder returns *logits*; ``torch.sigmoid`` (VAEs) or
``tanh`` (GAN generator, inside the net as in the seed) gives the image. Keeping logits lets the
BCE term use ``binary_cross_entropy_with_logits``: the same value as the seed's
``binary_cross_entropy(sigmoid(.))`` but without its log(0) clamp at -100.

Seed bugs fixed here:
* ``ConvVAE.forward`` ran the encoder twice (once for mu, once for logvar); it runs once.
* ``get_z`` called ``.cuda()`` unconditionally; noise is drawn on the input's device from an
  optional seeded ``torch.Generator``.
* ``BetaVAE`` shared one BatchNorm between encoder and decoder, so its running statistics mixed
  two different activations and the eval-mode network differed from the trained one (the seed's
  "Valid Lower Bound" of 158-183 nats against a train bound of ~124 shows it). Each side has
  its own BatchNorm here (+32 parameters).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data import IMAGE_PIXELS, IMAGE_SIDE


def _noise_like(t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(t)
    if generator.device != t.device:
        return torch.randn(t.shape, generator=generator, device=generator.device).to(t.device, t.dtype)
    return torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class _FlattenKeepGradFormat(torch.autograd.Function):
    """``h.flatten(1)`` of a channels_last feature map (a copy into (C, H, W) order), whose
    gradient goes back channels_last. Plain ``flatten`` hands back a (C, H, W)-contiguous gradient,
    and the ReLU / BatchNorm backward that meets it next then mixes two memory layouts, a slow
    path in PyTorch's CPU kernels (30x slower than matching layouts for a [64, 128, 7, 7] bf16
    LeakyReLU backward on the machine this was built on; the whole ConvVAE training step ran 5 %
    faster with this, losses bit-identical after 330 steps)."""

    @staticmethod
    def forward(ctx, h):
        ctx.shape = h.shape
        return h.reshape(h.shape[0], -1)

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last)


def flatten_features(h: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C*H*W] in (C, H, W) order, the seed's ``view(B, -1)``, for either memory
    layout; the gradient keeps h's layout (see _FlattenKeepGradFormat)."""
    return _FlattenKeepGradFormat.apply(h) if _is_channels_last(h) else h.flatten(1)


def unflatten_features(v: torch.Tensor, shape: tuple[int, int, int], conv: nn.Module) -> torch.Tensor:
    """[B, C*H*W] -> [B, C, H, W], in the memory layout of ``conv``'s weight (the layer it feeds),
    so a channels_last network gets channels_last input instead of reordering it inside the conv."""
    h = v.view(-1, *shape)
    return h.contiguous(memory_format=torch.channels_last) if _is_channels_last(conv.weight) else h


def _k4s2_patches(t: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """The 4x4 patches at stride 2 of ``t`` ([B, C, H, W]) zero-padded by 1: [B*oh*ow, 16*C] in
    (kh, kw, c) order, one row per output position of a kernel-4 / stride-2 / padding-1 conv."""
    b, c, h, w = t.shape
    oh, ow = out_hw
    tp = F.pad(t, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)  # memory [B, H+2, W+2, C]
    hp, wp = h + 2, w + 2
    view = tp.as_strided((b, oh, ow, 4, 4, c), (hp * wp * c, 2 * wp * c, 2 * c, wp * c, c, 1))
    return view.reshape(b * oh * ow, 16 * c)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B*H*W, C] (free for a channels_last tensor)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _convT_k4s2_weight_grad(h: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The weight gradient of conv_transpose2d(h, W, stride=2, padding=1), 4x4 kernel, as one GEMM:
    dW[i, (kh, kw, o)] = sum over (batch, y, x) of h[., i, y, x] * patch(grad)[., (kh, kw, o)],
    because output pixel (2y+kh-1, 2x+kw-1) received h[y, x] through tap (kh, kw). Returned as
    [C_in, C_out, 4, 4] with channels_last strides."""
    c_in, (hh, ww) = h.shape[1], h.shape[2:]
    return (_rows(h).t() @ _k4s2_patches(grad, (hh, ww))).view(c_in, 4, 4, -1).permute(0, 3, 1, 2)


def _convT_k4s2_gemm_forward(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv_transpose2d(h, weight, bias, stride=2, padding=1), 4x4 kernel, as one GEMM (every tap of
    every input pixel) and an overlap-add in fp32: input pixel (y, x) reaches output pixel
    (2y+kh-1, 2x+kw-1) through tap (kh, kw). The taps come out as whole [B, H, W] planes, so the
    overlap-add is 4 shifted plane sums (fast for the few output channels it is used for)."""
    b, c_in, hh, ww = h.shape
    c_out = weight.shape[1]
    taps = weight.permute(2, 3, 1, 0).reshape(16 * c_out, c_in) @ _rows(h).t()  # [(kh, kw, c), B*H*W]
    taps = taps.view(2, 2, 2, 2, c_out, b, hh, ww)  # kh = 2*qh + rh, kw = 2*qw + rw: [qh, rh, qw, rw, c, .]
    acc = torch.zeros(2, 2, c_out, b, hh + 1, ww + 1, dtype=torch.promote_types(taps.dtype, torch.float32),
                      device=h.device)  # [rh, rw, c, B, Y, X]: padded output pixel (2Y + rh, 2X + rw)
    for qh in (0, 1):
        for qw in (0, 1):
            acc[:, :, :, :, qh:qh + hh, qw:qw + ww] += taps[qh, :, qw]
    out = acc.permute(3, 2, 4, 0, 5, 1).reshape(b, c_out, 2 * hh + 2, 2 * ww + 2)[:, :, 1:-1, 1:-1]
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out.to(h.dtype).contiguous(memory_format=torch.channels_last)


class _ConvTransposeK4S2(torch.autograd.Function):
    """conv_transpose2d(h, weight, bias, stride=2, padding=1) with a 4x4 kernel whose forward
    (``gemm_forward``) and weight gradient (``gemm_weight_grad``) may each be one matrix product
    instead of oneDNN's kernels; the input gradient is always PyTorch's."""

    @staticmethod
    def forward(ctx, h, weight, bias, gemm_forward: bool, gemm_weight_grad: bool):
        ctx.save_for_backward(h, weight)
        ctx.gemm_weight_grad, ctx.has_bias = gemm_weight_grad, bias is not None
        if gemm_forward:
            return _convT_k4s2_gemm_forward(h, weight, bias)
        return F.conv_transpose2d(h, weight, bias, stride=2, padding=1)

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        native_w = need_w and not ctx.gemm_weight_grad
        grad_h = grad_w = grad_b = None
        if need_h or native_w:
            grad_h, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, h, weight, None, [2, 2], [1, 1], [1, 1], True, [0, 0], 1, [need_h, native_w, False])
        if need_w and ctx.gemm_weight_grad:
            grad_w = _convT_k4s2_weight_grad(h, grad)
        if ctx.has_bias and need_b:
            grad_b = grad.sum((0, 2, 3))
        return grad_h, grad_w, grad_b, None, None


class ConvTranspose2dK4S2(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1)``, the same parameters
    and state dict, whose weight gradient (``gemm_weight_grad``) and/or forward (``gemm_forward``)
    are one GEMM each on CPU under bf16 autocast (_ConvTransposeK4S2). oneDNN ran both of the
    ConvVAE's decoder layers well below the CPU's bf16 rate on the machine this was built on: the
    [64, 128, 7, 7] -> [64, 64, 14, 14] layer's weight gradient at about a third of it, the
    64 -> 1 channel layer's forward at a few percent. With both GEMMs one bf16 training step took
    18.6 instead of 20.8 ms (interleaved A/B, 8 rounds; the forward GEMM alone 20.0 ms; make bench
    compares 'lib native convT' with 'lib'); outputs and gradients agree with PyTorch's to bf16
    rounding (tests/test_models.py). In fp32 the GEMMs were slower, so
    fp32, other devices, and both flags off take PyTorch's own path."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, gemm_forward: bool = False,
                 gemm_weight_grad: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=bias)
        self.gemm_forward, self.gemm_weight_grad = gemm_forward, gemm_weight_grad

    def forward(self, h: torch.Tensor, output_size=None) -> torch.Tensor:
        if (output_size is not None or not (self.gemm_forward or self.gemm_weight_grad)
                or h.device.type != "cpu" or not torch.is_autocast_enabled("cpu")
                or torch.get_autocast_dtype("cpu") != torch.bfloat16):
            return super().forward(h, output_size)
        dt = torch.bfloat16  # autocast's casts for conv_transpose2d, done here because autocast is off inside
        bias = None if self.bias is None else self.bias.to(dt)
        with torch.autocast("cpu", enabled=False):
            return _ConvTransposeK4S2.apply(h.to(dt), self.weight.to(dt), bias, self.gemm_forward,
                                            self.gemm_weight_grad)


class VAEBase(nn.Module):
    """Shared maths of both VAEs: reparameterise, forward, sample."""

    latent_dim: int

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x_hat in [0, 1], shape [B, 1, 28, 28]."""
        return torch.sigmoid(self.decode_logits(z))

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None):
        """z = mu + eps * sigma, eps ~ N(0, I): differentiable in mu and logvar."""
        eps = _noise_like(mu, generator)
        return mu + eps * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Returns (x_logits, mu, logvar); the encoder runs once (the seed ran it twice)."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)
        return self.decode_logits(z), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, z: torch.Tensor | None = None):
        """n images x_hat ~ p(x|z), z ~ N(0, I) (or the given z), in [0, 1], shape [n, 1, 28, 28]."""
        device = next(self.parameters()).device
        if z is None:
            z = _noise_like(torch.empty(n, self.latent_dim, device=device), generator)
        return self.decode(z.to(device))


class ConvVAE(VAEBase):
    """The basic tier's VAE: three conv+BN+LeakyReLU blocks, linear heads, two transposed convs."""

    def __init__(self, latent_dim: int = 32):
        super().__init__()
        self.latent_dim = latent_dim
        self.feature_shape = (128, 7, 7)
        feat = 128 * 7 * 7
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=4, stride=2, padding=1),  # 64 x 14 x 14
            nn.BatchNorm2d(64),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, 128, kernel_size=4, stride=2, padding=1),  # 128 x 7 x 7
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(128, 128, kernel_size=3, stride=1, padding=1),  # 128 x 7 x 7
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.get_mu = nn.Linear(feat, latent_dim)  # 128*7*7 -> 32
        self.get_logvar = nn.Linear(feat, latent_dim)  # 128*7*7 -> 32
        self.get_temp = nn.Linear(latent_dim, feat)  # 32 -> 128*7*7
        self.decoder = nn.Sequential(
            ConvTranspose2dK4S2(128, 64),  # 64 x 14 x 14 (nn.ConvTranspose2d, k4 s2 p1; GEMM weight gradient)
            nn.ReLU(inplace=True),
            ConvTranspose2dK4S2(64, 1, gemm_forward=True, gemm_weight_grad=False),  # 1 x 28 x 28 (logits; GEMM forward)
        )

    def encode(self, x):
        h = flatten_features(self.encoder(x))  # [B, 128*7*7]
        return self.get_mu(h), self.get_logvar(h)

    def decode_logits(self, z):
        h = unflatten_features(self.get_temp(z), self.feature_shape, self.decoder[0])  # [B, 128, 7, 7]
        return self.decoder(h)


class BetaVAE(VAEBase):
    """The β-VAE tier's small conv VAE (z=10); the encoder gives sigma through softplus."""

    def __init__(self, latent_dim: int = 10, nc: int = 1):
        super().__init__()
        self.latent_dim, self.nc = latent_dim, nc
        self.enc_conv1 = nn.Conv2d(nc, 8, 3, 2, 1)  # B, 8, 14, 14
        self.enc_conv2 = nn.Conv2d(8, 16, 3, 2, 1)  # B, 16, 7, 7
        self.enc_conv3 = nn.Conv2d(16, 32, 3, 2)  # B, 32, 3, 3
        self.enc_fc1 = nn.Linear(32 * 3 * 3, 128)  # B, 128
        self.enc_mean = nn.Linear(128, latent_dim)  # B, z_dim
        self.enc_std = nn.Linear(128, latent_dim)  # B, z_dim
        self.dec_fc1 = nn.Linear(latent_dim, 128)  # B, 128
        self.dec_fc2 = nn.Linear(128, 32 * 3 * 3)  # B, 32*3*3
        self.dec_convt1 = nn.ConvTranspose2d(32, 16, 3, 2)  # B, 16, 7, 7
        self.dec_convt2 = nn.ConvTranspose2d(16, 8, 3, 2, 1, 1)  # B, 8, 14, 14
        self.dec_convt3 = nn.ConvTranspose2d(8, nc, 3, 2, 1, 1)  # B, 1, 28, 28
        # The seed used one BatchNorm2d(16) on both sides; see the module docstring.
        self.enc_bn = nn.BatchNorm2d(16)
        self.dec_bn = nn.BatchNorm2d(16)

    def encode(self, x):
        h = F.relu(self.enc_conv1(x.view(-1, self.nc, IMAGE_SIDE, IMAGE_SIDE)))
        h = self.enc_bn(F.relu(self.enc_conv2(h)))
        h = F.relu(self.enc_conv3(h))
        h = F.relu(self.enc_fc1(flatten_features(h)))
        mu = self.enc_mean(h)
        std = F.softplus(self.enc_std(h)) + 1e-6  # floor keeps log(std) finite (seed clamped log at 1e-10)
        return mu, 2.0 * torch.log(std)

    def decode_logits(self, z):
        h = F.relu(self.dec_fc1(z))
        h = F.relu(self.dec_fc2(h))
        h = self.dec_bn(F.relu(self.dec_convt1(unflatten_features(h, (32, 3, 3), self.dec_convt1))))
        h = F.relu(self.dec_convt2(h))
        return self.dec_convt3(h)


def _linear_bn_lrelu(n_in: int, n_out: int, normalize: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(n_in, n_out)]
    if normalize:
        layers.append(nn.BatchNorm1d(n_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


class Generator(nn.Module):
    """The seed's MLP generator: z (100) -> 128 -> 256 -> 512 -> 1024 -> 784, tanh output in [-1, 1]."""

    def __init__(self, latent_dim: int = 100):
        super().__init__()
        self.latent_dim = latent_dim
        self.model = nn.Sequential(
            *_linear_bn_lrelu(latent_dim, 128, normalize=False),
            *_linear_bn_lrelu(128, 256),
            *_linear_bn_lrelu(256, 512),
            *_linear_bn_lrelu(512, 1024),
            nn.Linear(1024, IMAGE_PIXELS),
            nn.Tanh(),
        )

    def forward(self, z):
        return self.model(z).view(-1, 1, IMAGE_SIDE, IMAGE_SIDE)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, z: torch.Tensor | None = None):
        """n images in [0, 1] (rescaled from tanh's [-1, 1]), shape [n, 1, 28, 28]."""
        device = next(self.parameters()).device
        if z is None:
            z = _noise_like(torch.empty(n, self.latent_dim, device=device), generator)
        return (self(z.to(device)) + 1) / 2


class Discriminator(nn.Module):
    """The seed's MLP discriminator 784 -> 512 -> 256 -> 1. Returns the *logit*; the seed's final
    Sigmoid lives in the loss (``binary_cross_entropy_with_logits``), the same maths, stable."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(IMAGE_PIXELS, 512),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(512, 256),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(256, 1),
        )

    def forward(self, img):
        return self.model(img.flatten(1))


MODELS = {"ConvVAE": ConvVAE, "BetaVAE": BetaVAE, "Generator": Generator, "Discriminator": Discriminator}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
