"""The run cache (lib.store): a checkpoint is used only by the run that saved it, and only when complete."""
import re
import warnings

import pytest
import torch

from lib import store


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of run 'run-a' holding a model state and a history."""
    path = store.checkpoint_path("run-a", tmp_path)
    state = {"run_id": "run-a", "model": {"w": torch.arange(3.0)}, "history": [{"epoch": 1}]}
    store.save_checkpoint(path, state)
    return path


def _quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_checkpoint_path_is_one_folder_per_run(tmp_path):
    assert store.checkpoint_path("run-a", tmp_path) == tmp_path / "run-a" / "checkpoint.pt"


def test_save_is_atomic_and_load_gives_the_state_back_to_its_own_run(saved):
    assert sorted(p.name for p in saved.parent.iterdir()) == ["checkpoint.pt"], "no temporary file is left"
    state = _quietly(store.load_checkpoint, saved, owner="run-a", keys=("model", "history"))
    assert state["run_id"] == "run-a" and torch.equal(state["model"]["w"], torch.arange(3.0))
    assert state["history"] == [{"epoch": 1}]


def test_a_failed_save_leaves_the_previous_checkpoint_intact(saved, monkeypatch):
    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(store.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        store.save_checkpoint(saved, {"run_id": "run-a", "model": {}, "history": []})
    monkeypatch.undo()
    assert _quietly(store.load_checkpoint, saved, owner="run-a")["history"] == [{"epoch": 1}]


def test_absent_checkpoint_is_none_without_a_warning(tmp_path):
    assert _quietly(store.load_checkpoint, tmp_path / "nothing" / "checkpoint.pt", owner="run-a") is None


def test_another_runs_checkpoint_is_refused_with_a_warning(saved):
    with pytest.warns(UserWarning, match=r"saved for run 'run-a', not 'run-b'.*retraining"):
        assert store.load_checkpoint(saved, owner="run-b", keys=("model",)) is None


def test_a_checkpoint_without_a_run_id_is_refused_when_an_owner_is_asked_for(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, path)  # written before checkpoints carried their run id
    assert _quietly(store.load_checkpoint, path, keys=("model",)) is not None  # no owner asked: usable
    with pytest.warns(UserWarning, match=r"saved for run None, not 'run-a'.*moved to old\.pt\.unusable"):
        assert store.load_checkpoint(path, owner="run-a") is None
    assert not path.exists() and (tmp_path / "old.pt.unusable").exists()  # set aside, not overwritten later


@pytest.mark.parametrize("keys, missing", [(("model", "opt"), "['opt']"), (("grids", "opt"), "['grids', 'opt']")])
def test_a_checkpoint_missing_keys_is_refused_with_a_warning(saved, keys, missing):
    with pytest.warns(UserWarning, match=re.escape(f"lacks {missing}")):
        assert store.load_checkpoint(saved, owner="run-a", keys=keys) is None


def test_a_checkpoint_that_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.warns(UserWarning, match=r"holds a list, not a checkpoint"):
        assert store.load_checkpoint(path) is None


def test_an_unreadable_checkpoint_is_refused(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.warns(UserWarning, match=r"corrupted"):
        assert store.load_checkpoint(path, owner="run-a") is None


class _Payload:
    """Not a tensor, dict or number: a weights-only load must not unpickle it."""


def test_a_checkpoint_holding_arbitrary_objects_is_not_unpickled(tmp_path):
    path = tmp_path / "pickle.pt"
    torch.save({"run_id": "run-a", "model": _Payload()}, path)
    with pytest.warns(UserWarning, match=r"not usable \(corrupted: UnpicklingError: [^\n\x1b]*\); moved to .*retraining"):
        assert store.load_checkpoint(path, owner="run-a") is None


# --- memo: an evaluation kept by its inputs and the code that computes it -------------------

def _counted(value):
    calls = []

    def compute():
        calls.append(1)
        return value
    return compute, calls


def test_memo_computes_once_per_key_and_gives_the_same_value_back(tmp_path):
    compute, calls = _counted(({"fid": 1.5, "shares": (0.1, 0.9)}, torch.arange(4, dtype=torch.uint8)))
    first = store.memo("score", {"n": 10}, compute, cache=tmp_path)
    second = store.memo("score", {"n": 10}, compute, cache=tmp_path)
    assert len(calls) == 1
    assert first[0] == second[0] and torch.equal(first[1], second[1])
    store.memo("score", {"n": 11}, compute, cache=tmp_path)  # another key: computed again
    assert len(calls) == 2


def test_memo_recomputes_when_the_scoring_code_changes(tmp_path, monkeypatch):
    compute, calls = _counted({"x": 1.0})
    store.memo("score", {"n": 1}, compute, cache=tmp_path)
    monkeypatch.setattr(store, "source_hash", lambda **_: "other code")
    store.memo("score", {"n": 1}, compute, cache=tmp_path)
    assert len(calls) == 2


def test_an_unreadable_memo_entry_is_computed_again_with_a_warning(tmp_path):
    compute, calls = _counted({"x": 2.0})
    store.memo("score", {"n": 1}, compute, cache=tmp_path)
    (entry,) = (tmp_path / "scores").glob("*.pt")
    entry.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        assert store.memo("score", {"n": 1}, compute, cache=tmp_path) == {"x": 2.0}
    assert len(calls) == 2


def test_memo_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMNIST_MEMO", "0")
    compute, calls = _counted({"x": 3.0})
    store.memo("score", {"n": 1}, compute, cache=tmp_path)
    store.memo("score", {"n": 1}, compute, cache=tmp_path)
    assert len(calls) == 2 and not (tmp_path / "scores").exists()


def test_digest_follows_every_weight_but_not_the_memory_layout():
    conv = torch.nn.Conv2d(1, 4, 3)
    base = store.digest(conv)
    twin = torch.nn.Conv2d(1, 4, 3)
    twin.load_state_dict(conv.state_dict())
    assert store.digest(twin) == base
    assert store.digest(conv.to(memory_format=torch.channels_last)) == base  # same numbers, other strides
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] += 1e-6
    assert store.digest(conv) != base
    x = torch.zeros(2, 3)
    assert store.digest(x) != store.digest(x.double()) != store.digest(torch.zeros(3, 2))
    assert store.digest(torch.ones(3, dtype=torch.bfloat16)) != store.digest(torch.zeros(3, dtype=torch.bfloat16))
