"""The course report's networks, layer for layer (shape comments as in the course report), with its bugs fixed.

Every VAE decoder returns *logits* (``torch.sigmoid`` gives the image), so the BCE term can use
``binary_cross_entropy_with_logits``: the course report's ``binary_cross_entropy(sigmoid(.))`` without its
log(0) clamp at -100.

The course report's bugs fixed here:
* ``ConvVAE.forward`` ran the encoder twice (once for mu, once for logvar); it runs once.
* ``get_z`` called ``.cuda()`` unconditionally; noise is drawn on the input's device from an
  optional seeded ``torch.Generator``.
* ``BetaVAE`` shared one BatchNorm between encoder and decoder, so its running statistics mixed
  two different activations and the eval-mode network differed from the trained one (the course report's
  "Valid Lower Bound" of 158-183 nats against a train bound of ~124 shows it). Each side has
  its own BatchNorm here (+32 parameters).

Speed switches (bf16 autocast, memory layout, fused Adam) are not set here: see ``lib/train.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data import IMAGE_PIXELS, IMAGE_SIDE


def standard_normal(shape, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """eps ~ N(0, I) of ``shape`` on ``like``'s device and dtype, drawn from ``generator`` if given
    (a CPU generator with a CUDA tensor draws on the CPU and copies)."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    eps = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return eps.to(like.device)


def _prior_z(net: nn.Module, n: int, generator: torch.Generator | None, z: torch.Tensor | None) -> torch.Tensor:
    """``z`` (or n draws z ~ N(0, I) of the network's latent size) on the network's device."""
    weight = next(net.parameters())
    if z is None:
        z = standard_normal((n, net.latent_dim), weight, generator)
    return z.to(weight.device)


class VAE(nn.Module):
    """The maths both VAEs share: q(z|x) = N(mu, diag exp(logvar)), z = mu + sigma * eps, p(x|z). A subclass
    defines ``encode`` (x [B, 1, 28, 28] -> mu, logvar [B, latent_dim]) and ``decode_logits`` (z -> logits
    [B, 1, 28, 28])."""

    latent_dim: int

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x_hat = sigmoid(logits), the Bernoulli means in [0, 1], shape [B, 1, 28, 28]."""
        return torch.sigmoid(self.decode_logits(z))

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None):
        """z = mu + eps * sigma, eps ~ N(0, I): a sample of q(z|x) that is differentiable in mu and logvar."""
        eps = standard_normal(mu.shape, mu, generator)
        return mu + eps * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """(x_logits, mu, logvar); the encoder runs once (the course report's code ran it twice)."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)
        return self.decode_logits(z), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, z: torch.Tensor | None = None):
        """n images x_hat = decode(z), z ~ N(0, I) (or the given z), in [0, 1], shape [n, 1, 28, 28]."""
        return self.decode(_prior_z(self, n, generator, z))


class ConvVAE(VAE):
    """The basic tier's VAE: three conv + BN + LeakyReLU blocks, linear heads, two transposed convs."""

    def __init__(self, latent_dim: int = 32):
        super().__init__()
        self.latent_dim = latent_dim
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
        self.get_mu = nn.Linear(128 * 7 * 7, latent_dim)  # 128*7*7 -> 32
        self.get_logvar = nn.Linear(128 * 7 * 7, latent_dim)  # 128*7*7 -> 32
        self.get_temp = nn.Linear(latent_dim, 128 * 7 * 7)  # 32 -> 128*7*7
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(128, 64, kernel_size=4, stride=2, padding=1),  # 64 x 14 x 14
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(64, 1, kernel_size=4, stride=2, padding=1),  # 1 x 28 x 28 (logits)
        )

    def encode(self, x):
        h = self.encoder(x).flatten(1)  # [B, 128*7*7], the course report's view(B, -1)
        return self.get_mu(h), self.get_logvar(h)

    def decode_logits(self, z):
        h = self.get_temp(z).view(-1, 128, 7, 7)  # [B, 128, 7, 7]
        return self.decoder(h)


class BetaVAE(VAE):
    """The β-VAE tier's small conv VAE (z = 10); the encoder gives sigma through a softplus."""

    def __init__(self, latent_dim: int = 10):
        super().__init__()
        self.latent_dim = latent_dim
        self.enc_conv1 = nn.Conv2d(1, 8, 3, 2, 1)  # B, 8, 14, 14
        self.enc_conv2 = nn.Conv2d(8, 16, 3, 2, 1)  # B, 16, 7, 7
        self.enc_conv3 = nn.Conv2d(16, 32, 3, 2)  # B, 32, 3, 3
        self.enc_fc1 = nn.Linear(32 * 3 * 3, 128)  # B, 128
        self.enc_mean = nn.Linear(128, latent_dim)  # B, z_dim
        self.enc_std = nn.Linear(128, latent_dim)  # B, z_dim
        self.dec_fc1 = nn.Linear(latent_dim, 128)  # B, 128
        self.dec_fc2 = nn.Linear(128, 32 * 3 * 3)  # B, 32*3*3
        self.dec_convt1 = nn.ConvTranspose2d(32, 16, 3, 2)  # B, 16, 7, 7
        self.dec_convt2 = nn.ConvTranspose2d(16, 8, 3, 2, 1, 1)  # B, 8, 14, 14
        self.dec_convt3 = nn.ConvTranspose2d(8, 1, 3, 2, 1, 1)  # B, 1, 28, 28
        # The course report used one BatchNorm2d(16) on both sides; see the module docstring.
        self.enc_bn = nn.BatchNorm2d(16)
        self.dec_bn = nn.BatchNorm2d(16)

    def encode(self, x):
        h = F.relu(self.enc_conv1(x.view(-1, 1, IMAGE_SIDE, IMAGE_SIDE)))
        h = self.enc_bn(F.relu(self.enc_conv2(h)))
        h = F.relu(self.enc_conv3(h))
        h = F.relu(self.enc_fc1(h.flatten(1)))
        mu = self.enc_mean(h)
        std = F.softplus(self.enc_std(h)) + 1e-6  # floor keeps log(std) finite (the course report clamped log at 1e-10)
        return mu, 2.0 * torch.log(std)

    def decode_logits(self, z):
        h = F.relu(self.dec_fc1(z))
        h = F.relu(self.dec_fc2(h)).view(-1, 32, 3, 3)
        h = self.dec_bn(F.relu(self.dec_convt1(h)))
        h = F.relu(self.dec_convt2(h))
        return self.dec_convt3(h)


def _block(n_in: int, n_out: int, normalize: bool = True) -> list[nn.Module]:
    """Linear -> (BatchNorm1d) -> LeakyReLU(0.2), the course report's generator block."""
    return [nn.Linear(n_in, n_out), *([nn.BatchNorm1d(n_out)] if normalize else []), nn.LeakyReLU(0.2, inplace=True)]


class Generator(nn.Module):
    """The course report's MLP generator: z (100) -> 128 -> 256 -> 512 -> 1024 -> 784, tanh output in [-1, 1]."""

    def __init__(self, latent_dim: int = 100):
        super().__init__()
        self.latent_dim = latent_dim
        self.model = nn.Sequential(
            *_block(latent_dim, 128, normalize=False),
            *_block(128, 256),
            *_block(256, 512),
            *_block(512, 1024),
            nn.Linear(1024, IMAGE_PIXELS),
            nn.Tanh(),
        )

    def forward(self, z):
        return self.model(z).view(-1, 1, IMAGE_SIDE, IMAGE_SIDE)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, z: torch.Tensor | None = None):
        """n images in [0, 1] (tanh's [-1, 1] rescaled), shape [n, 1, 28, 28]."""
        return (self(_prior_z(self, n, generator, z)) + 1) / 2


class Discriminator(nn.Module):
    """The course report's MLP discriminator 784 -> 512 -> 256 -> 1. Returns the *logit*: the course
    report's final Sigmoid lives in the loss (``binary_cross_entropy_with_logits``), the same maths, stable."""

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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
