"""The training loop's settings: the learning-rate schedule does what it says, a bad spec is refused
before any work, and the thread count respects a user's OMP_NUM_THREADS."""
import os
import subprocess
import sys

import pytest
import torch

from harness import config
from lib import train
from lib.train import RunSpec, lr_at


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
    with pytest.raises(ValueError, match=r"lr_schedule 'step' is invalid: allowed one of \['constant', 'cosine'\]"):
        lr_at(RunSpec(tag="t", lr_schedule="step"), 0, 10)


@pytest.mark.parametrize("change, pattern", [
    (dict(model="VQVAE"), r"model 'VQVAE' is invalid: allowed one of \['ConvVAE', 'BetaVAE', 'GAN'\]"),
    (dict(recon="huber"), r"unknown loss 'huber'"),
    (dict(lr_schedule="step"), r"lr_schedule 'step' is invalid"),
    (dict(model="GAN", lr_schedule="cosine"), r"'cosine' is not supported for the GAN"),
    (dict(denoise=True), r"denoise=True is invalid here"),
])
def test_fit_refuses_a_bad_spec_before_any_work(tmp_path, change, pattern):
    spec = RunSpec(tag="bad", **change)
    with pytest.raises(ValueError, match=pattern):
        train.fit(spec, cache=tmp_path, show_progress=False)
    assert not any(tmp_path.iterdir()), "nothing is written for a refused spec"


def test_fit_applies_the_schedule(tmp_path, mnist_raw, monkeypatch):
    seen = []
    real_step = train.vae_step

    def spy(model, opt, *args, **kwargs):
        seen.append(opt.param_groups[0]["lr"])
        return real_step(model, opt, *args, **kwargs)

    monkeypatch.setattr(train, "vae_step", spy)
    spec = RunSpec(tag="sched", epochs=2, train_subset=256, test_subset=64, batch_size=64, latent_dim=4,
                   lr=2e-3, lr_schedule="cosine")
    train.fit(spec, cache=tmp_path, show_progress=False)
    assert len(seen) == 8  # 2 epochs x 4 batches
    assert seen == pytest.approx([lr_at(spec, s, 8) for s in range(8)])
    assert seen[0] == pytest.approx(2e-3) and seen[-1] < seen[0] / 10


def test_a_denoising_vae_sees_noisy_inputs_and_reconstructs_clean_targets(tmp_path, mnist_raw, monkeypatch):
    seen = []
    real_step = train.vae_step

    def spy(model, opt, x, *args, **kwargs):
        seen.append((x.clone(), args[-1].clone()))
        return real_step(model, opt, x, *args, **kwargs)

    monkeypatch.setattr(train, "vae_step", spy)
    spec = RunSpec(tag="dn", epochs=1, train_subset=128, test_subset=64, batch_size=64, latent_dim=4,
                   noise_amount=0.5, denoise=True)
    run = train.fit(spec, cache=tmp_path, show_progress=False)
    noisy, _, clean, _ = train.run_data(spec, "cpu")
    x, target = seen[0]
    assert x.shape == target.shape == (64, 1, 28, 28)
    rows = {tuple(r.flatten().tolist()) for r in noisy}
    assert tuple(x[0].flatten().tolist()) in rows, "the input is a noisy training image"
    assert not torch.equal(x, target) and tuple(target[0].flatten().tolist()) in {tuple(r.flatten().tolist()) for r in clean}
    assert "denoise" in run.spec.key() and "denoise" not in RunSpec(tag="t").key()


def _threads_in_a_fresh_process(omp):
    """(set_threads()'s return, torch.get_num_threads() after it) in a new interpreter with OMP_NUM_THREADS=omp."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    code = "import torch; from harness import config; n = config.set_threads(); print(n, torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=config.ROOT, timeout=120)
    return tuple(int(v) for v in out.stdout.split())


def test_set_threads_leaves_a_users_omp_num_threads_alone():
    assert _threads_in_a_fresh_process("1") == (1, 1)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs more than one core to tell 'every core' from 1")
def test_set_threads_uses_every_core_without_omp_num_threads():
    assert _threads_in_a_fresh_process(None) == (os.cpu_count(), os.cpu_count())
