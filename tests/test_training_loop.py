"""The training loop's bookkeeping, as the CPU runs it: several runs through fit_many / fit_arms give what
fit gives one by one, the epoch tally finds the first non-finite batch without a per-step read-back, a run
keeps a bounded number of sample grids, and a checkpoint that cannot be loaded (wrong shapes, wrong keys,
inconsistent grids) or a killed save's leftover never stops a notebook. The CUDA path itself (graphs,
streams) needs a GPU: tools/cuda_check.py checks it there."""
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from harness import config
from lib import store, train
from lib.train import RunSpec, fit, fit_arms, fit_many

SPEC = RunSpec(tag="loop", epochs=2, train_subset=192, test_subset=200, batch_size=64)


def _no_time(history):
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in history]


def test_fit_many_and_fit_arms_give_what_fit_gives(tmp_path, mnist_raw):
    specs = [dataclasses.replace(SPEC, seed=s) for s in (0, 1)]
    alone = [fit(s, cache=tmp_path / "alone", show_progress=False) for s in specs]
    many = fit_many(specs, cache=tmp_path / "many", show_progress=False)
    arms = fit_arms({"a": specs[:1], "b": specs[1:]}, cache=tmp_path / "arms", show_progress=False)
    for a, m, r in zip(alone, many, [*arms["a"], *arms["b"]]):
        assert _no_time(a.history) == _no_time(m.history) == _no_time(r.history)
        assert torch.equal(a.grids, m.grids) and m.grid_epochs == [1, 2]


def test_fit_many_refuses_a_run_listed_twice(tmp_path):
    with pytest.raises(ValueError, match="listed twice"):
        fit_many([SPEC, SPEC], cache=tmp_path, show_progress=False)


def test_tally_sums_like_the_loop_did_and_finds_the_first_non_finite_batch():
    tally = train.Tally(["a", "b"], torch.device("cpu"))
    rows = [(1.0, 2.0), (3.0, float("nan")), (float("inf"), 1.0)]
    for a, b in rows[:1]:
        tally.add({"a": torch.tensor(a), "b": torch.tensor(b)}, 4)
    assert tally.sums.tolist() == [4.0, 8.0] and int(tally.first_bad) == -1
    for a, b in rows[1:]:
        tally.add({"a": torch.tensor(a), "b": torch.tensor(b)}, 4)
    assert int(tally.first_bad) == 1  # the first bad batch, not the last
    tally.reset()
    assert tally.sums.tolist() == [0.0, 0.0] and int(tally.first_bad) == -1 and int(tally.step) == 0


def test_a_non_finite_loss_names_its_batch(tmp_path, mnist_raw):
    bad = dataclasses.replace(SPEC, lr=1e6, epochs=1, train_subset=640)
    with pytest.raises(train.TrainingError, match=r"non-finite loss at epoch 1, batch \d+"):
        fit(bad, cache=tmp_path, show_progress=False)


@pytest.mark.parametrize("epochs", [1, 5, 12, 13, 250, 10_000])
def test_grid_epochs_are_bounded_and_include_the_first_and_last(epochs):
    kept = train.grid_epochs(epochs)
    assert kept[0] == 1 and kept[-1] == epochs and len(kept) == min(epochs, train.GRID_EPOCHS)
    assert kept == sorted(set(kept))


def test_a_long_run_keeps_no_more_grids_than_grid_epochs(tmp_path, mnist_raw):
    spec = dataclasses.replace(SPEC, epochs=14, train_subset=64)
    run = fit(spec, cache=tmp_path, show_progress=False)
    assert len(run.grids) == train.GRID_EPOCHS and run.grid_epochs == train.grid_epochs(14)


def _break(path, how):
    state = torch.load(path, weights_only=True)
    if how == "shape":
        state["model"][next(iter(state["model"]))] = torch.zeros(3, 3)
    elif how == "keys":
        state["model"] = {f"renamed.{k}": v for k, v in state["model"].items()}
    elif how == "grids":
        state["grids"] = state["grids"][:1]
    elif how == "history":
        state["history"] = 7
    torch.save(state, path)


@pytest.mark.parametrize("how", ["shape", "keys", "grids", "history"])
def test_a_checkpoint_that_cannot_be_loaded_is_set_aside_and_retrained(tmp_path, mnist_raw, how):
    ref = fit(SPEC, cache=tmp_path, show_progress=False)
    path = train.checkpoint_path(SPEC.run_id, tmp_path)
    _break(path, how)
    with pytest.warns(UserWarning, match=r"checkpoint .*checkpoint\.pt is not usable \(.+\); moved to "
                                         r"checkpoint\.pt\.unusable, retraining"):
        run = fit(SPEC, cache=tmp_path, show_progress=False)
    assert run.trained_epochs == 2 and (path.parent / "checkpoint.pt.unusable").exists()
    assert _no_time(run.history) == _no_time(ref.history)


def test_a_killed_saves_leftover_is_removed_and_a_failed_save_leaves_none(tmp_path, mnist_raw, monkeypatch):
    path = train.checkpoint_path(SPEC.run_id, tmp_path)
    path.parent.mkdir(parents=True)
    orphan = path.with_name("checkpoint.pt.tmp-123456")
    orphan.write_bytes(b"half a checkpoint")
    fit(SPEC, cache=tmp_path, show_progress=False)
    assert not orphan.exists()

    def interrupted(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(store.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.save_checkpoint(tmp_path / "x" / "checkpoint.pt", {"a": 1})
    assert list((tmp_path / "x").iterdir()) == []


def test_a_full_disk_names_the_path_and_no_space(tmp_path, monkeypatch):
    def full(obj, f, *a, **k):
        raise RuntimeError("basic_ios::clear: iostream error")
    monkeypatch.setattr(store.torch, "save", full)
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: type("U", (), {"free": 4096})())
    with pytest.raises(OSError, match=r"no space left on the device to save .*checkpoint\.pt \(4,096 bytes free\)"):
        store.save_checkpoint(tmp_path / "checkpoint.pt", {"a": 1})


@pytest.mark.parametrize("name, value", [("epochs", 10**9), ("latent_dim", 10**9), ("batch_size", 60_001),
                                         ("ablation_epochs", 10**6), ("seeds", 1000)])
def test_every_size_has_an_upper_bound_with_a_reason(name, value):
    with pytest.raises(config.ParameterError, match=rf"parameter '{name}' = {value} is invalid: allowed an "
                                                    r"integer in \[\d+, \d+\] \(.+\)"):
        config.validate({name: value})


def test_model_epochs_counts_the_default_profile():
    # 01: BCE x3, MSE x2, L1 x2, no-KL and MSE and L1 at matched rate x1 = 10 models; 05: four noisy levels and two denoising VAEs x1
    from builder.report import model_epochs

    assert model_epochs("default") == {"ConvVAE": 16 * 5, "GAN": 3 * 20, "BetaVAE": (4 * 3 + 3) * 8 + 8}
    assert not train.use_cuda_graphs(torch.device("cpu"))
    assert math.isclose(sum(model_epochs("full").values()), 7340)
    # a build of some notebooks with other values (make study's rungs, NB=, -p) counts those
    assert model_epochs("study", {"04_beta_vae": {"epochs": 15, "latent2_epochs": 15}, "03_gan": {"epochs": 60}}) \
        == {"ConvVAE": 2 * 5, "GAN": 2 * 60, "BetaVAE": (4 * 2 + 3) * 15 + 15}  # 03 trains 01's BCE models itself


def test_a_permission_error_is_not_reported_as_a_full_disk(tmp_path, monkeypatch):
    def denied(obj, f, *a, **k):
        raise PermissionError(13, "Permission denied", str(f))
    monkeypatch.setattr(store.torch, "save", denied)
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: type("U", (), {"free": 4096})())
    with pytest.raises(PermissionError):
        store.save_checkpoint(tmp_path / "checkpoint.pt", {"a": 1})


def test_a_killed_score_saves_leftover_is_removed(tmp_path):
    first = store.memo("t", {"k": 1}, lambda: 1.5, cache=tmp_path)
    (path,) = (tmp_path / "scores").glob("t-*.pt")
    orphan = path.with_name(path.name + ".tmp-424242")
    orphan.write_bytes(b"half")
    assert store.memo("t", {"k": 1}, lambda: 2.5, cache=tmp_path) == first == 1.5 and not orphan.exists()


@pytest.mark.parametrize("change", [dict(batch_size=0), dict(train_subset=0), dict(epochs=0)])
def test_fit_refuses_sizes_below_one_before_any_work(tmp_path, change):
    with pytest.raises(ValueError, match=rf"{next(iter(change))} 0 is invalid: allowed an integer >= 1"):
        fit(dataclasses.replace(SPEC, **change), cache=tmp_path, show_progress=False)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("model", ["ConvVAE", "GAN"])
def test_a_constant_lr_run_continues_the_longest_shorter_one_and_matches_a_run_from_scratch(tmp_path, mnist_raw, model):
    """make study's budget ladder: under a constant learning rate, 3 epochs = 1 epoch, then 2 more (continued
    from the cache), bit for bit; a cosine run never continues (its schedule depends on its length)."""
    spec = dataclasses.replace(SPEC, epochs=3, model=model, latent_dim=100 if model == "GAN" else 32)
    direct = fit(spec, cache=tmp_path / "direct", show_progress=False)
    fit(dataclasses.replace(spec, epochs=1), cache=tmp_path / "ladder", show_progress=False)
    continued = fit(spec, cache=tmp_path / "ladder", show_progress=False)
    assert continued.resumed_from == 1 and continued.trained_epochs == 2
    assert _no_time(continued.history) == _no_time(direct.history)
    assert all(torch.equal(a, b) for a, b in zip(direct.model.state_dict().values(), continued.model.state_dict().values()))
    assert continued.grid_epochs == direct.grid_epochs == [1, 2, 3] and torch.equal(continued.grids, direct.grids)
    if model == "GAN":  # the GAN trains at a constant rate only
        return
    cosine = dataclasses.replace(spec, lr_schedule="cosine")
    fit(dataclasses.replace(cosine, epochs=1), cache=tmp_path / "ladder", show_progress=False)
    assert fit(cosine, cache=tmp_path / "ladder", show_progress=False).resumed_from == 0


def test_a_continued_run_keeps_only_the_grids_its_own_schedule_draws(tmp_path, mnist_raw):
    short = dataclasses.replace(SPEC, epochs=train.GRID_EPOCHS + 1, train_subset=64)
    fit(short, cache=tmp_path, show_progress=False)
    long = fit(dataclasses.replace(short, epochs=2 * train.GRID_EPOCHS + 4), cache=tmp_path, show_progress=False)
    assert set(long.grid_epochs) <= set(train.grid_epochs(long.spec.epochs)) and len(long.grids) == len(long.grid_epochs)
    assert long.grid_epochs == sorted(long.grid_epochs) and long.grid_epochs[-1] == long.spec.epochs


def test_cuda_checks_build_the_default_profiles_specs_without_a_gpu():
    """tools/cuda_check.py runs only where a GPU is lent: the specs it trains are built here, so a broken name in it
    is found before a device session is spent on it."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "tools" / "cuda_check.py"
    spec = importlib.util.spec_from_file_location("cuda_check", path)
    cc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cc)
    vae = cc.default_spec("01_vae_basic", "ConvVAE", "bf16")
    gan = cc.default_spec("03_gan", "GAN", "fp32")
    assert (vae.model, vae.precision, vae.lr_schedule) == ("ConvVAE", "bf16", "cosine")
    assert (gan.model, gan.adam_betas, gan.tag) == ("GAN", (0.5, 0.999), "cc-gan")
