"""Salt-and-pepper noise, deterministic given a generator."""
from __future__ import annotations

import torch


def salt_and_pepper(x: torch.Tensor, amount: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of ``x`` (values in [0, 1]) with each pixel replaced, with probability ``amount``, by 1 (salt) or
    0 (pepper), half and half. (The course report's ``sp_noise`` looped over pixels in Python and only noised the
    first epoch's batches; here the noisy set is drawn once from the generator.)"""
    if not isinstance(amount, (int, float)) or not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"noise amount must be a fraction in [0, 1], got {amount!r}")
    gen_device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=gen_device).to(x.device)
    v = torch.rand(x.shape, generator=generator, device=gen_device).to(x.device)
    replaced = u < amount
    salt = v < 0.5
    out = x.clone()
    out[replaced & salt] = 1.0
    out[replaced & ~salt] = 0.0
    return out
