"""Salt-and-pepper noise, deterministic given a generator."""
from __future__ import annotations

import torch


def salt_and_pepper(
    x: torch.Tensor,
    amount: float,
    salt_ratio: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace a fraction ``amount`` of the pixels of ``x`` (values in [0, 1]) by 1 (salt) or 0 (pepper).

    Each pixel is chosen independently with probability ``amount``; a chosen pixel becomes salt
    with probability ``salt_ratio``. Returns a new tensor; ``x`` is not modified. With the same
    ``generator`` state the output is identical. (The course report's ``sp_noise`` looped over pixels in
    Python and only noised the first epoch's batches; here the noisy set is fixed once.)
    """
    if not isinstance(amount, (int, float)) or not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"noise amount must be a fraction in [0, 1], got {amount!r}")
    if not isinstance(salt_ratio, (int, float)) or not 0.0 <= float(salt_ratio) <= 1.0:
        raise ValueError(f"salt_ratio must be in [0, 1], got {salt_ratio!r}")
    gen_device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=gen_device).to(x.device)
    v = torch.rand(x.shape, generator=generator, device=gen_device).to(x.device)
    replaced = u < amount
    salt = v < salt_ratio
    out = x.clone()
    out[replaced & salt] = 1.0
    out[replaced & ~salt] = 0.0
    return out
