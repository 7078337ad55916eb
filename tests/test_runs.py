"""A training run's integrity: data and training faults (clear errors, NaN, divergence), atomic and
weights-only checkpoints, broken checkpoints retrained, killed runs resumed, run ids covering parameters, data
and code, and repeatable numbers."""
import dataclasses
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import pytest
import torch

from lib import data, store, train
from lib.data import DataError, ensure_mnist
from lib.train import RunSpec, TrainingError, fit

ROOT = Path(__file__).resolve().parent.parent


UNWRITABLE = "/proc/genmnist-cannot-write-here"  # even root cannot create folders in /proc


# --- data faults ----------------------------------------------------------------------------

def test_unwritable_data_dir_is_a_clear_error():
    with pytest.raises(DataError, match=r"cannot be written.*Fix: make it writable"):
        ensure_mnist(UNWRITABLE)


# --- training faults ------------------------------------------------------------------------

SPEC = RunSpec(tag="t", epochs=2, train_subset=128, test_subset=64, batch_size=32, latent_dim=4)


def _poisonable(monkeypatch):
    """Make run_data return tensors the test can poison with NaN later."""
    real = train.run_data
    held = {}

    def run_data(spec, device):
        out = real(spec, device)
        held["train"] = out[0]
        return out

    monkeypatch.setattr(train, "run_data", run_data)
    return held


def test_nan_loss_stops_with_run_epoch_batch_and_last_checkpoint(tmp_path, monkeypatch, mnist_raw):
    held = _poisonable(monkeypatch)

    def poison(epoch, row):
        held["train"][:] = float("nan")

    with pytest.raises(TrainingError) as e:
        fit(SPEC, cache=tmp_path, show_progress=False, on_epoch_end=poison)
    msg = str(e.value)
    assert SPEC.run_id in msg and "epoch 2, batch 0" in msg
    assert str(train.checkpoint_path(SPEC.run_id, tmp_path)) in msg and "(epoch 1)" in msg


def test_nan_in_first_batch_says_there_is_no_checkpoint(tmp_path, monkeypatch, mnist_raw):
    real = train.run_data

    def nan_data(spec, device):
        out = real(spec, device)
        out[0][:] = float("nan")
        return out

    monkeypatch.setattr(train, "run_data", nan_data)
    with pytest.raises(TrainingError, match=r"epoch 1, batch 0.*Last good checkpoint: none"):
        fit(SPEC, cache=tmp_path, show_progress=False)


def test_checkpoints_are_atomic_and_weights_only(tmp_path, mnist_raw):
    fit(SPEC, cache=tmp_path, show_progress=False)
    path = train.checkpoint_path(SPEC.run_id, tmp_path)
    assert path.exists() and not list(path.parent.glob("*.tmp*"))
    state = torch.load(path, weights_only=True)
    assert len(state["history"]) == 2


def test_corrupted_checkpoint_is_reported_and_retrained(tmp_path, mnist_raw):
    ref = fit(SPEC, cache=tmp_path / "a", show_progress=False)
    path = train.checkpoint_path(SPEC.run_id, tmp_path / "b")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a checkpoint")
    with pytest.warns(UserWarning, match="corrupted"):
        run = fit(SPEC, cache=tmp_path / "b", show_progress=False)
    assert run.trained_epochs == 2
    assert _no_time(run.history) == _no_time(ref.history)


def _no_time(history):
    return [{k: v for k, v in row.items() if k != "train_seconds"} for row in history]


def test_another_runs_checkpoint_is_retrained_not_presented_as_this_run(tmp_path, mnist_raw):
    """Spec A's checkpoint copied over spec B's path (same architecture, so its weights would load):
    B is retrained from scratch, with a warning naming both runs, and ends up as B trained alone."""
    spec_b = dataclasses.replace(SPEC, seed=1)
    a = fit(SPEC, cache=tmp_path / "a", show_progress=False)
    ref_b = fit(spec_b, cache=tmp_path / "ref", show_progress=False)
    path_b = train.checkpoint_path(spec_b.run_id, tmp_path / "b")
    path_b.parent.mkdir(parents=True)
    shutil.copyfile(train.checkpoint_path(SPEC.run_id, tmp_path / "a"), path_b)
    with pytest.warns(UserWarning, match=re.escape(f"saved for run {SPEC.run_id!r}, not {spec_b.run_id!r}")):
        b = fit(spec_b, cache=tmp_path / "b", show_progress=False)
    assert b.resumed_from == 0 and b.trained_epochs == spec_b.epochs
    assert _no_time(b.history) == _no_time(ref_b.history) != _no_time(a.history)
    assert torch.equal(b.grids, ref_b.grids)
    for (k, v), w in zip(b.model.state_dict().items(), ref_b.model.state_dict().values()):
        assert torch.equal(v, w), k
    state = torch.load(path_b, weights_only=True)
    assert state["run_id"] == spec_b.run_id and state["spec"] == spec_b.key()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # B's own checkpoint now: loaded quietly
        assert fit(spec_b, cache=tmp_path / "b", show_progress=False).trained_epochs == 0


@pytest.mark.parametrize("missing", ["model", "opt", "history", "grids"])
def test_a_readable_checkpoint_missing_a_part_is_retrained_not_a_key_error(tmp_path, mnist_raw, missing):
    """This run's checkpoint without one of the parts fit needs (say, written by an older lib): retrained."""
    ref = fit(SPEC, cache=tmp_path / "ref", show_progress=False)
    state = torch.load(train.checkpoint_path(SPEC.run_id, tmp_path / "ref"), weights_only=True)
    del state[missing]
    path = train.checkpoint_path(SPEC.run_id, tmp_path / "b")
    store.save_checkpoint(path, state)
    with pytest.warns(UserWarning, match=re.escape(f"it lacks [{missing!r}]")):
        run = fit(SPEC, cache=tmp_path / "b", show_progress=False)
    assert run.resumed_from == 0 and run.trained_epochs == SPEC.epochs
    assert _no_time(run.history) == _no_time(ref.history)
    assert missing in torch.load(path, weights_only=True)


def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path, mnist_raw):
    # cosine schedule: the resumed run must also pick up the learning rate where it stopped
    spec = RunSpec(tag="resume", epochs=3, train_subset=256, test_subset=128, batch_size=64, latent_dim=8,
                   lr_schedule="cosine")
    full = fit(spec, cache=tmp_path / "full", show_progress=False)

    def kill(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(spec, cache=tmp_path / "killed", show_progress=False, on_epoch_end=kill)
    resumed = fit(spec, cache=tmp_path / "killed", show_progress=False)
    assert resumed.resumed_from == 1 and resumed.trained_epochs == 2
    assert _no_time(resumed.history) == _no_time(full.history)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(full.grids, resumed.grids)
    # and a finished run is loaded, not retrained
    again = fit(spec, cache=tmp_path / "killed", show_progress=False)
    assert again.trained_epochs == 0


def test_run_id_covers_parameters_data_and_code(monkeypatch):
    base = SPEC.run_id
    for change in (dict(recon="mse"), dict(epochs=3), dict(seed=1), dict(beta=2.0), dict(noise_amount=0.1),
                   dict(lr=2e-3), dict(lr_schedule="cosine"), dict(train_subset=None), dict(model="BetaVAE")):
        assert RunSpec(**{**SPEC.key(), "adam_betas": SPEC.adam_betas, **change}).run_id != base, change
    monkeypatch.setattr(train, "source_hash", lambda: "other-code")
    assert SPEC.run_id != base
    monkeypatch.undo()
    monkeypatch.setattr(train.data, "data_fingerprint", lambda: "other-data")
    assert SPEC.run_id != base


# One line of real code in each module a run id hashes, as someone tuning the project would change it.
CODE_EDITS = {
    "lib/data.py": ("IMAGE_SIDE = 28", "IMAGE_SIDE = 29"),
    "lib/models.py": ("nn.LeakyReLU(0.2, inplace=True),", "nn.LeakyReLU(0.3, inplace=True),"),
    "lib/losses.py": ("logvar.exp() - logvar - 1.0", "logvar.exp() - logvar - 0.5"),
    "lib/noise.py": ("replaced = u < amount", "replaced = u <= amount"),
    "lib/bounds.py": ("EVAL_BATCH = 1000", "EVAL_BATCH = 500"),
    "lib/train.py": ("GRID = 64", "GRID = 32"),
}


def _copy_result_sources(dst: Path) -> Path:
    for name in store.RESULT_SOURCES:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).write_text((store.PACKAGES / name).read_text(encoding="utf-8"), encoding="utf-8")
    return dst


@pytest.mark.parametrize("name", store.RESULT_SOURCES)
def test_source_hash_changes_when_one_line_of_code_changes(tmp_path, monkeypatch, name):
    """Every hashed module counts: one changed line of code in a copy of lib gives another hash
    (and so another run id), whichever of RESULT_SOURCES it is in."""
    copy = _copy_result_sources(tmp_path / "packages")
    original = store.source_hash(folder=copy)
    assert original == store.source_hash(), "the hash depends on the files' code, not on their folder"
    old, new = CODE_EDITS.get(name, ("\n", "\n_hash_probe = 1\n"))  # a module added later: one new statement
    src = (copy / name).read_text()
    assert old in src, f"{name} no longer contains {old!r}: update CODE_EDITS"
    (copy / name).write_text(src.replace(old, new, 1))
    assert store.source_hash(folder=copy) != original
    before = SPEC.run_id  # lib's own code, which hashes as the unedited copy
    monkeypatch.setattr(train, "source_hash", lambda: store.source_hash(folder=copy))
    assert SPEC.run_id != before, "a run trained by the edited code gets another run id"


def test_source_hash_ignores_docstring_and_comment_edits(tmp_path):
    """Prose edits in every hashed module (module and function docstrings, comments) keep the hash: they retrain nothing."""
    copy = _copy_result_sources(tmp_path / "packages")
    original = store.source_hash(folder=copy)
    for name in store.RESULT_SOURCES:
        src = (copy / name).read_text()
        assert src.startswith('"""'), f"{name} has no module docstring to reword"
        reworded = '"""Reworded for the test. ' + src[3:] + "\n# a trailing comment added by the test\n"
        (copy / name).write_text(reworded)
    models_src = (copy / "lib/models.py").read_text()
    doc = '"""x_hat = sigmoid(logits)'
    assert doc in models_src
    (copy / "lib/models.py").write_text(models_src.replace(doc, '"""The image: x_hat = sigmoid(logits)', 1))
    assert store.source_hash(folder=copy) == original


def test_prose_edits_leave_the_code_hash_alone_and_code_edits_do_not():
    src = (ROOT / "lib" / "losses.py").read_text()
    base = store.code_only(src)
    reworded = src.replace('"""Loss terms', '"""Reworded: loss terms', 1).replace("# --- GAN", "# --- the GAN", 1)
    assert reworded != src and store.code_only(reworded) == base  # docstring and comment edits
    recoded = src.replace("0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)", "0.5 * (mu.pow(2) + logvar.exp() - logvar)")
    assert recoded != src and store.code_only(recoded) != base  # a change to the maths
    func_doc_only = "def f():\n    'only a docstring'\n"
    assert store.code_only(func_doc_only) == store.code_only("def f():\n    pass\n")


# --- reproducibility --------------------------------------------------------------------------

@pytest.mark.notebooks
def test_two_smoke_runs_with_the_same_seed_give_identical_metrics(tmp_path, monkeypatch, mnist_raw):
    import papermill as pm

    outs = []
    for i in range(2):
        monkeypatch.setenv("GENMNIST_CACHE", str(tmp_path / f"cache{i}"))  # a fresh cache: really retrain
        out = tmp_path / f"out{i}"
        pm.execute_notebook(str(ROOT / "notebooks" / "04_beta_vae.ipynb"), str(tmp_path / f"nb{i}.ipynb"),
                            parameters={"profile": "smoke", "output_dir": str(out), "betas": [1.0, 4.0], "latent2_epochs": 0,
                                        "seeds": 1, "collapse_betas": []},
                            kernel_name="python3", cwd=str(ROOT), progress_bar=False)
        outs.append(out)
    a = sorted((outs[0] / "runs").glob("*/metrics.json"))
    b = sorted((outs[1] / "runs").glob("*/metrics.json"))
    assert len(a) == 2 and [p.parent.name for p in a] == [p.parent.name for p in b]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()
        assert json.loads(pa.read_text())["metrics"]["test_bound"] > 0


def _weights(run) -> dict[str, torch.Tensor]:
    nets = {"model": run.model, **({"D": run.discriminator} if run.discriminator is not None else {})}
    return {f"{n}.{k}": v.detach().clone() for n, net in nets.items() for k, v in net.state_dict().items()}


TINY = dict(train_subset=256, test_subset=64, batch_size=64)
REPEATABLE = [
    # noise and a cosine schedule: the salt-and-pepper draw and the per-step rate must also repeat
    RunSpec(tag="rep-conv", model="ConvVAE", epochs=2, latent_dim=4, noise_amount=0.1, lr_schedule="cosine", **TINY),
    RunSpec(tag="rep-beta", model="BetaVAE", epochs=1, latent_dim=4, **TINY),
    RunSpec(tag="rep-gan", model="GAN", epochs=2, latent_dim=8, **TINY),
]


@pytest.mark.parametrize("spec", REPEATABLE, ids=lambda s: s.model)
def test_fit_is_repeatable_whatever_torchs_global_generator_does(tmp_path, mnist_raw, spec):
    """All of a run's randomness (init, shuffling, noise, the model's z, the grid's z) flows from its
    seed: two trainings from scratch give bit-identical weights, histories and grids even when torch's
    global generator was seeded differently and drawn from between epochs, fit neither draws from nor
    reseeds that generator, and another seed gives another model. Catches any lib code that reaches
    for the global generator (a torch.randn / randperm / rand without ``generator=``)."""
    torch.manual_seed(1)
    before = torch.get_rng_state()
    a = fit(spec, cache=tmp_path / "a", show_progress=False)
    assert torch.equal(torch.get_rng_state(), before), "fit drew from, or reseeded, torch's global generator"

    def stir(epoch, row):  # what a notebook may do between epochs
        torch.rand(1000)
        torch.manual_seed(100 + epoch)

    torch.manual_seed(2)
    torch.randn(123)
    b = fit(spec, cache=tmp_path / "b", show_progress=False, on_epoch_end=stir)
    assert a.trained_epochs == b.trained_epochs == spec.epochs
    assert _no_time(b.history) == _no_time(a.history)
    assert torch.equal(b.grids, a.grids)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k

    c = fit(dataclasses.replace(spec, seed=1), cache=tmp_path / "c", show_progress=False)
    wc = _weights(c)
    differ = [k for k in wa if wa[k].is_floating_point() and not torch.equal(wa[k], wc[k])]
    assert len(differ) == sum(v.is_floating_point() for v in wa.values()), "another seed, another model"
    assert not torch.equal(c.grids, a.grids) and _no_time(c.history) != _no_time(a.history)


# --- 7. divergence without a NaN; the in-process data memo ---------------------------------

def test_a_diverging_run_is_marked_and_warned_about(tmp_path, mnist_raw):
    spec = RunSpec(tag="diverge", model="GAN", epochs=2, lr=1000.0, latent_dim=8, train_subset=256, test_subset=64,
                   batch_size=64)
    with pytest.warns(UserWarning, match=rf"run {spec.run_id} diverged at epoch \d: .* per image \(\|value\| > 1e\+06\)"):
        run = fit(spec, cache=tmp_path, show_progress=False)
    flagged = [row for row in run.history if row.get("diverged")]
    assert flagged and all(row["diverged"] is True for row in flagged)
    assert all(max(abs(row[k]) for k in ("g_loss", "d_loss")) > train.DIVERGED for row in flagged)
    with pytest.warns(UserWarning, match=r"\(loaded from its checkpoint\) diverged at epoch\(s\)"):
        again = fit(spec, cache=tmp_path, show_progress=False)
    assert again.trained_epochs == 0


def test_a_healthy_run_is_not_marked(tmp_path, mnist_raw):
    spec = RunSpec(tag="healthy", epochs=1, train_subset=128, test_subset=64, batch_size=32, latent_dim=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        run = fit(spec, cache=tmp_path, show_progress=False)
    assert "diverged" not in run.history[0]


@pytest.mark.parametrize("edit", ["same-size-mtime-kept", "replaced-same-size-mtime"])
def test_the_data_memo_notices_an_edit_that_keeps_size_and_mtime(tmp_path, edit):
    p = tmp_path / "file.idx"
    p.write_bytes(b"\x00" * 64)
    st = p.stat()
    data._mark_verified(p)
    assert data._verified_ok(p)
    time.sleep(0.05)  # file times tick coarsely (a few ms)
    if edit == "same-size-mtime-kept":
        with open(p, "r+b") as f:
            f.write(b"\x01")
    else:
        other = tmp_path / "other.idx"
        other.write_bytes(b"\x02" * 64)
        os.replace(other, p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
    assert not data._verified_ok(p), "an edited file must be hashed again"
