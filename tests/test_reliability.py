"""Bad input, data faults, training faults, resumability and reproducibility (issue: reliability)."""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import pytest
import torch

from lib import config, store, train
from lib.config import ParameterError, resolve
from lib.data import DataError, ensure_mnist
from lib.train import RunSpec, TrainingError, fit

ROOT = Path(__file__).resolve().parent.parent
UNWRITABLE = "/proc/genmnist-cannot-write-here"  # even root cannot create folders in /proc


# --- bad parameters: a clear error naming the parameter and the allowed values -------------

@pytest.mark.parametrize("nb, kwargs, pattern", [
    ("01_vae_basic", {"losses": ["bce", "huber"]}, r"'losses'.*'huber'.*\['bce', 'l1', 'mse'\]"),
    ("01_vae_basic", {"epochs": 0}, r"'epochs' = 0 .*integer in \[1, \d+\]"),
    ("01_vae_basic", {"batch_size": -5}, r"'batch_size' = -5 .*integer in \[1, \d+\]"),
    ("01_vae_basic", {"latent_dim": 0}, r"'latent_dim' = 0 .*integer in \[1, \d+\]"),
    ("01_vae_basic", {"epochs": 2.5}, r"'epochs' = 2.5 .*integer in \[1, \d+\]"),
    ("03_gan", {"lr": 0}, r"'lr' = 0 .*> 0"),
    ("03_gan", {"lr": -1e-3}, r"'lr' = -0.001 .*> 0"),
    ("04_beta_vae", {"betas": [1, -2]}, r"'betas' = -2 .*>= 0"),
    ("05_noisy_data", {"noise_amounts": [0.1, 1.5]}, r"'noise_amounts' = 1.5 .*\[0, 1\]"),
    ("05_noisy_data", {"noise_amounts": []}, r"'noise_amounts' = \[\] .*non-empty list"),
    ("03_gan", {"device": "tpu"}, r"'device' = 'tpu' .*'auto', 'cpu'"),
    ("03_gan", {"betas": [1.0]}, r"unknown parameter\(s\) \['betas'\] for 03_gan"),
    ("01_vae_basic", {"lr_schedule": "step"}, r"'lr_schedule' = 'step' .*\['constant', 'cosine'\]"),
    ("01_vae_basic", {"adam_beta2": 1.0}, r"'adam_beta2' = 1.0 .*a number in \(0, 1\)"),
    ("05_noisy_data", {"adam_beta2": "fast"}, r"'adam_beta2' = 'fast' .*a number in \(0, 1\)"),
    ("04_beta_vae", {"adam_beta2": 0.99}, r"unknown parameter\(s\) \['adam_beta2'\] for 04_beta_vae"),
    ("03_gan", {"lr_schedule": "cosine"}, r"unknown parameter\(s\) \['lr_schedule'\] for 03_gan"),
    ("01_vae_basic", {"matched_weights": {"bce": 2.0}}, r"'matched_weights' = .*\['l1', 'mse'\]"),
    ("01_vae_basic", {"matched_weights": {"mse": -1}}, r"'matched_weights' = \{'mse': -1\} .*weights > 0 \('mse' has -1\)"),
    ("01_vae_basic", {"matched_weights": [10, 3]}, r"'matched_weights' = \[10, 3\] .*a dict"),
])
def test_bad_parameters_name_parameter_and_allowed_values(nb, kwargs, pattern, tmp_path):
    with pytest.raises(ParameterError, match=pattern):
        resolve(nb, "smoke", output_dir=str(tmp_path), **kwargs)


def test_matched_weights_written_as_text_become_numbers(tmp_path):
    cfg = resolve("01_vae_basic", "smoke", output_dir=str(tmp_path), matched_weights={"mse": "1e1"})
    assert cfg["matched_weights"] == {"mse": 10.0}
    assert resolve("01_vae_basic", "smoke", output_dir=str(tmp_path), matched_weights={})["matched_weights"] == {}


def test_adam_beta2_is_the_one_tools_choose_adam_chose_and_reaches_the_run(tmp_path):
    from lib.train import spec_from

    record = json.loads((Path(__file__).resolve().parent.parent / "bench" / "adam_choice.json").read_text())
    for nb in ("01_vae_basic", "02_vae_derivation", "05_noisy_data"):
        cfg = resolve(nb, "default", output_dir=str(tmp_path))
        assert cfg["adam_beta2"] == record["chosen_beta2"], nb
        assert spec_from(cfg, "x").adam_betas == (0.9, record["chosen_beta2"])
    cfg = resolve("01_vae_basic", "smoke", output_dir=str(tmp_path), adam_beta2="0.999")  # -p text becomes a number
    assert spec_from(cfg, "x").adam_betas == (0.9, 0.999)
    # the β-VAE tier keeps the course report's Adam, the GAN its own betas (given by the notebook)
    assert spec_from(resolve("04_beta_vae", "default", output_dir=str(tmp_path)), "x").adam_betas == (0.9, 0.999)


def test_the_matched_weights_are_the_ones_tools_match_rate_chose():
    from lib.config import MATCHED_WEIGHTS

    record = json.loads((Path(__file__).resolve().parent.parent / "bench" / "rate_match.json").read_text())
    assert MATCHED_WEIGHTS == {loss: r["chosen"] for loss, r in record["losses"].items()}
    assert all(r["within_tolerance"] for r in record["losses"].values())


def test_unknown_profile():
    with pytest.raises(ParameterError, match=r"'profile' = 'fast' .*\['smoke', 'quick', 'default', 'full', 'study'\]"):
        resolve("03_gan", "fast")


@pytest.fixture
def restore_determinism_flags():
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[:2]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


@pytest.mark.parametrize("env, on", [(None, True), ("0", False)])
def test_deterministic_cuda_sets_the_flags_unless_switched_off(monkeypatch, restore_determinism_flags, env, on):
    """The settings that made two CUDA smoke runs bit-identical on an H200 (report/cuda_check.json);
    checked here without a GPU since they are plain torch flags."""
    if env is None:
        monkeypatch.delenv("GENMNIST_DETERMINISTIC", raising=False)
    else:
        monkeypatch.setenv("GENMNIST_DETERMINISTIC", env)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # recorded, so the test leaves the environment as it was
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    config.deterministic_cuda()
    assert torch.backends.cudnn.deterministic is on
    assert torch.backends.cudnn.benchmark is (not on)
    assert torch.are_deterministic_algorithms_enabled() is on
    assert (os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8") is on


def test_cpu_device_leaves_torch_determinism_alone(restore_determinism_flags):
    torch.use_deterministic_algorithms(False)
    assert config.resolve_device("cpu").type == "cpu"
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_requested_without_gpu(tmp_path):
    with pytest.raises(ParameterError, match=r"'device' = 'cuda' .*no CUDA GPU"):
        resolve("03_gan", "smoke", device="cuda", output_dir=str(tmp_path))


def test_unwritable_output_dir():
    with pytest.raises(ParameterError, match=r"'output_dir' .*cannot be written"):
        resolve("03_gan", "smoke", output_dir=UNWRITABLE)


def test_explicit_parameters_override_the_profile(tmp_path):
    cfg = resolve("04_beta_vae", "default", epochs=3, betas=[2], output_dir=str(tmp_path))
    assert cfg["epochs"] == 3 and cfg["betas"] == [2] and cfg["batch_size"] == 64


def test_numbers_written_as_text_are_read_as_numbers(tmp_path):
    """YAML 1.1 (papermill's and make report's -p) reads 1e-3 as the string '1e-3'."""
    cfg = resolve("04_beta_vae", "smoke", lr="1e-3", epochs="2", betas=["1", "2.5"], output_dir=str(tmp_path))
    assert cfg["lr"] == 1e-3 and cfg["epochs"] == 2 and isinstance(cfg["epochs"], int) and cfg["betas"] == [1.0, 2.5]
    with pytest.raises(ParameterError, match=r"'epochs' = 'two' .*integer in \[1, \d+\]"):
        resolve("04_beta_vae", "smoke", epochs="two", output_dir=str(tmp_path))
    with pytest.raises(ParameterError, match=r"'epochs' = 2.5 .*integer in \[1, \d+\]"):
        resolve("04_beta_vae", "smoke", epochs="2.5", output_dir=str(tmp_path))


def _report(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "builder.report", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_report_rejects_a_bad_p_value_before_running(tmp_path):
    r = _report("--nb", "03_gan", "-p", "epochs", "0", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2
    assert "parameter 'epochs' = 0 is invalid" in r.stderr
    assert not (tmp_path / "report").exists() and not list(tmp_path.glob("report.tmp-*"))


def test_report_rejects_unknown_notebook_and_parameter(tmp_path):
    r = _report("--nb", "09_nope", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2 and "09_nope" in r.stderr and "03_gan" in r.stderr
    r = _report("--nb", "03_gan", "-p", "colour", "red", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2 and "colour" in r.stderr


def test_make_report_exits_nonzero_on_bad_parameter():
    r = subprocess.run(["make", "report", "NB=03_gan", "P=-p lr -1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert "parameter 'lr' = -1 is invalid" in r.stderr


def test_failed_notebook_leaves_the_previous_report_untouched(tmp_path, mnist_raw):
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    nb = nbformat.read(str(ROOT / "notebooks" / "03_gan.ipynb"), as_version=4)
    nb.cells.insert(3, nbformat.v4.new_code_cell("raise RuntimeError('injected failure')"))
    nbformat.write(nb, str(nb_dir / "03_gan.ipynb"))
    report = tmp_path / "report"
    (report / "figures").mkdir(parents=True)
    (report / "03_gan.html").write_text("previous good page")
    (report / "figures" / "03_gan_progression.png").write_bytes(b"previous figure")
    r = _report("--nb", "03_gan", "--profile", "smoke", "--report-dir", str(report), "--notebook-dir", str(nb_dir))
    assert r.returncode == 1
    assert "injected failure" in r.stderr + r.stdout
    assert (report / "03_gan.html").read_text() == "previous good page"
    assert (report / "figures" / "03_gan_progression.png").read_bytes() == b"previous figure"
    failed = list(tmp_path.glob("report.failed-*"))
    assert len(failed) == 1 and "03_gan failed" in (failed[0] / "FAILED.txt").read_text()
    assert not list(tmp_path.glob("report.tmp-*"))


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
    "data.py": ("IMAGE_SIDE = 28", "IMAGE_SIDE = 29"),
    "models.py": ("nn.LeakyReLU(0.2, inplace=True),", "nn.LeakyReLU(0.3, inplace=True),"),
    "losses.py": ("logvar.exp() - logvar - 1.0", "logvar.exp() - logvar - 0.5"),
    "noise.py": ("replaced = u < amount", "replaced = u <= amount"),
    "bounds.py": ("EVAL_BATCH = 1000", "EVAL_BATCH = 500"),
    "train.py": ("GRID = 64", "GRID = 32"),
}


def _copy_result_sources(dst: Path) -> Path:
    dst.mkdir()
    for name in store.RESULT_SOURCES:
        (dst / name).write_text((store.LIB / name).read_text(encoding="utf-8"), encoding="utf-8")
    return dst


@pytest.mark.parametrize("name", store.RESULT_SOURCES)
def test_source_hash_changes_when_one_line_of_code_changes(tmp_path, monkeypatch, name):
    """Every hashed module counts: one changed line of code in a copy of lib gives another hash
    (and so another run id), whichever of RESULT_SOURCES it is in."""
    copy = _copy_result_sources(tmp_path / "lib")
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
    copy = _copy_result_sources(tmp_path / "lib")
    original = store.source_hash(folder=copy)
    for name in store.RESULT_SOURCES:
        src = (copy / name).read_text()
        assert src.startswith('"""'), f"{name} has no module docstring to reword"
        reworded = '"""Reworded for the test. ' + src[3:] + "\n# a trailing comment added by the test\n"
        (copy / name).write_text(reworded)
    models_src = (copy / "models.py").read_text()
    doc = '"""x_hat = sigmoid(logits)'
    assert doc in models_src
    (copy / "models.py").write_text(models_src.replace(doc, '"""The image: x_hat = sigmoid(logits)', 1))
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
