"""The training path's speed choices change speed, not results (issue: performance), and the
learning-rate schedule does what it says."""
import os
import subprocess
import sys

import pytest
import torch

from lib import config, train
from lib.models import BetaVAE, ConvVAE
from lib.train import RunSpec, as_input, lr_at, prepare_vae


def test_constant_schedule_is_the_seeds_fixed_rate():
    spec = RunSpec(tag="t", lr=1e-3)
    assert {lr_at(spec, s, 100) for s in range(100)} == {1e-3}


def test_cosine_schedule_starts_at_lr_decays_monotonically_and_ends_near_zero():
    spec = RunSpec(tag="t", lr=3e-3, lr_schedule="cosine")
    lrs = [lr_at(spec, s, 1000) for s in range(1000)]
    assert lrs[0] == pytest.approx(3e-3)
    assert lrs[500] == pytest.approx(1.5e-3)  # half way: half the rate
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert 0 < lrs[-1] < 3e-3 * 1e-4
    assert sum(lrs) / len(lrs) == pytest.approx(1.5e-3, rel=1e-3)  # the mean of a cosine ramp


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match=r"'step' is invalid: allowed 'constant' or 'cosine'"):
        lr_at(RunSpec(tag="t", lr_schedule="step"), 0, 10)


def test_fit_vae_applies_the_schedule(tmp_path, mnist_raw, monkeypatch):
    seen = []
    real_step = train.vae_step

    def spy(model, opt, *args, **kwargs):
        seen.append(opt.param_groups[0]["lr"])
        return real_step(model, opt, *args, **kwargs)

    monkeypatch.setattr(train, "vae_step", spy)
    spec = RunSpec(tag="sched", epochs=2, train_subset=256, test_subset=64, batch_size=64, latent_dim=4,
                   lr=2e-3, lr_schedule="cosine")
    train.fit_vae(spec, cache=tmp_path, progress=False)
    assert len(seen) == 8  # 2 epochs x 4 batches
    assert seen == pytest.approx([lr_at(spec, s, 8) for s in range(8)])
    assert seen[0] == pytest.approx(2e-3) and seen[-1] < seen[0] / 10


@pytest.mark.parametrize("cls", [ConvVAE, BetaVAE])
def test_channels_last_changes_memory_order_not_values(cls):
    torch.manual_seed(0)
    a = cls().train()
    b = cls().train()
    b.load_state_dict(a.state_dict())
    b = prepare_vae(b, torch.device("cpu"))
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
               and not p.is_contiguous() for p in b.parameters())
    x = torch.rand(16, 1, 28, 28)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    out_a, out_b = a(x, generator=g1), b(as_input(x), generator=g2)
    for u, v in zip(out_a, out_b):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)
    (out_a[0].sum() + out_a[1].sum()).backward()
    (out_b[0].sum() + out_b[1].sum()).backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-3, msg=name)


def _mallopt_probe(env_value):
    code = "from lib import config; print(config.tune_allocator())"
    env = {**os.environ, "GENMNIST_ALLOCATOR": env_value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=config.ROOT)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings are Linux-only")
def test_allocator_tuning_applies_on_glibc_and_can_be_switched_off():
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        pytest.skip("not a glibc system")
    assert _mallopt_probe("") == "True"
    assert _mallopt_probe("default") == "False"
