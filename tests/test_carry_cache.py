"""tools/carry_cache.py: a model cache carried across a code move only where the two codes' checkpoints agree bit for
bit, copied (never moved) under today's run ids, and nothing carried that the old code did not train."""
import importlib.util
from pathlib import Path

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
