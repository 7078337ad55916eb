"""tools/carry_cache.py: a model cache carried across a code move only where the two codes' checkpoints agree bit for
bit, copied (never moved) under today's run ids, and nothing carried that the old code did not train."""
import importlib.util
from pathlib import Path

import pytest
import torch

from lib import store
from lib.train import RunSpec, fit

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("carry_cache", ROOT / "tools" / "carry_cache.py")
carry_cache = importlib.util.module_from_spec(spec)
spec.loader.exec_module(carry_cache)


def test_differences_sees_any_changed_number_and_ignores_epoch_times_and_run_ids():
    a = {"model": {"w": torch.ones(3)}, "history": [{"epoch": 1, "loss": 2.0, "train_seconds": 5.0}], "run_id": "a"}
    same = {"model": {"w": torch.ones(3)}, "history": [{"epoch": 1, "loss": 2.0, "train_seconds": 9.0}], "run_id": "b"}
    assert carry_cache.differences(a, same) == []
    w = torch.ones(3)
    w[1] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))  # one float a single step away
    assert carry_cache.differences(a, {**same, "model": {"w": w}}) == ["/model/w"]
    assert carry_cache.differences(a, {**same, "model": {"w": torch.ones(3, dtype=torch.float64)}}) == ["/model/w"]
    assert carry_cache.differences(a, {**same, "history": [{"epoch": 1, "loss": 2.5}]}) == ["/history[0]/loss (2.0 vs 2.5)"]
    assert carry_cache.differences(a, {**same, "history": []}) == ["/history (length 1 vs 0)"]


def test_carry_copies_what_the_old_code_trained_under_todays_ids_and_nothing_else(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    runs = [fit(RunSpec(f"t{i}", train_subset=64, test_subset=64, epochs=1, seed=i), cache=cache, show_progress=False)
            for i in range(2)]
    old_ids = {runs[0].run_id: runs[0].run_id, runs[1].run_id: "trained-by-other-code"}  # by the spec's tag below
    new_ids = {r.spec.tag: f"{r.spec.tag}-today" for r in runs}

    def run_in(checkout, specs, mode, cache=None):
        assert mode == "ids"
        return [(old_ids[RunSpec(**{**s, "adam_betas": tuple(s["adam_betas"])}).run_id] if checkout == "old"
                 else new_ids[s["tag"]]) for s in specs]

    monkeypatch.setattr(carry_cache, "run_in", run_in)
    assert carry_cache.carry("old", cache) == (1, 0, 1)
    copied = store.load_checkpoint(store.checkpoint_path("t0-today", cache), owner="t0-today")
    original = torch.load(store.checkpoint_path(runs[0].run_id, cache), weights_only=True)
    assert copied is not None and carry_cache.differences(copied, original) == []
    assert store.checkpoint_path(runs[0].run_id, cache).exists(), "the original stays"
    assert not store.checkpoint_path("t1-today", cache).exists(), "a run the old code did not train is not carried"
    assert carry_cache.carry("old", cache) == (0, 1, 2), "a second carry finds it there (and skips the copy itself)"


def test_carry_leaves_a_checkpoint_under_a_foreign_folder_and_a_kind_the_check_did_not_train(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    run = fit(RunSpec("t", train_subset=64, test_subset=64, epochs=1), cache=cache, show_progress=False)
    moved = store.checkpoint_path("elsewhere", cache)  # the right state, in another run's folder
    moved.parent.mkdir(parents=True)
    moved.write_bytes(store.checkpoint_path(run.run_id, cache).read_bytes())
    untested = store.checkpoint_path("gan-bf16", cache)  # a kind the CPU check never trains
    store.save_checkpoint(untested, {"run_id": "gan-bf16", "spec": {**run.spec.key(), "model": "GAN",
                                                                    "precision": "bf16"}})
    monkeypatch.setattr(carry_cache, "run_in", lambda checkout, specs, mode, cache=None:
                        [run.run_id if checkout == "old" else "t-today" for _ in specs])
    assert carry_cache.carry("old", cache) == (1, 0, 2)
    assert not store.checkpoint_path("gan-bf16-today", cache).exists()


def test_check_refuses_when_the_two_codes_train_different_models(tmp_path, monkeypatch, capsys):
    def run_in(checkout, specs, mode, cache=None):  # the "old" code trains one more step's worth of difference
        ids = [f"{s['tag']}-{i}" for i, s in enumerate(specs)]
        for i, run_id in enumerate(ids):
            w = torch.full((2,), float(i)) + (1e-6 if Path(checkout).name == "old" and i == 3 else 0.0)
            store.save_checkpoint(store.checkpoint_path(run_id, cache), {"model": {"w": w}, "run_id": run_id})
        return ids

    monkeypatch.setattr(carry_cache, "run_in", run_in)
    with pytest.raises(SystemExit, match="train different models .1 differences.; nothing carried"):
        carry_cache.check(tmp_path / "old", tmp_path)
    out = capsys.readouterr().out
    assert out.count("bit-identical") == len(carry_cache.CHECK_SPECS) - 1 and "DIFFERS: /model/w" in out
