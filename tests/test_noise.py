import pytest
import torch

from lib.noise import salt_and_pepper


def test_amount_is_fraction_of_pixels_replaced_half_salt_half_pepper():
    # A mid-grey image: every replaced pixel visibly changes, to exactly 0 or 1.
    x = torch.full((10_000, 1, 28, 28), 0.5)
    y = salt_and_pepper(x, 0.1, generator=torch.Generator().manual_seed(0))
    changed = y != x
    frac = changed.float().mean().item()
    assert abs(frac - 0.10) <= 0.005
    salt = (y == 1.0).float().sum() / changed.sum()
    assert abs(salt.item() - 0.5) <= 0.01
    assert torch.all((y[changed] == 0) | (y[changed] == 1))
    assert torch.equal(x, torch.full_like(x, 0.5)), "input must not be modified"


def test_on_mnist_like_data_changed_fraction_matches_expectation():
    # Pixels are 0 (background) or 0.7 (ink): salt changes every pixel, pepper only ink pixels.
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(2_000, 1, 28, 28, generator=g) > 0.8).float() * 0.7
    y = salt_and_pepper(x, 0.2, generator=torch.Generator().manual_seed(2))
    ink = (x > 0).float().mean().item()
    expected = 0.2 * (0.5 * 1.0 + 0.5 * ink)
    assert abs((y != x).float().mean().item() - expected) < 0.003


def test_same_seed_same_output_different_seed_different_output():
    x = torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    a = salt_and_pepper(x, 0.2, generator=torch.Generator().manual_seed(5))
    b = salt_and_pepper(x, 0.2, generator=torch.Generator().manual_seed(5))
    c = salt_and_pepper(x, 0.2, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_amount_extremes():
    x = torch.full((50, 1, 28, 28), 0.5)
    assert torch.equal(salt_and_pepper(x, 0.0), x)
    y = salt_and_pepper(x, 1.0)
    assert torch.all((y == 0) | (y == 1))


@pytest.mark.parametrize("amount", [-0.1, 1.5, float("nan"), "10%"])
def test_amount_outside_unit_interval_is_an_error(amount):
    with pytest.raises(ValueError, match=r"noise amount must be a fraction in \[0, 1\]"):
        salt_and_pepper(torch.zeros(1, 1, 28, 28), amount)
