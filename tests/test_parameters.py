"""Parameters: a bad value is refused before any training with a message naming the parameter and the allowed
values; values that would fail only after training are refused too; the README's own spellings pass;
unknown names, the profile and output_dir through make report."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from builder import report as R
from harness import config, notebook
from harness.config import ParameterError, parameter_names, resolve

ROOT = Path(__file__).resolve().parent.parent


UNWRITABLE = "/proc/genmnist-cannot-write-here"  # even root cannot create folders in /proc


README = ROOT / "README.md"


def _report_cmd(*args):
    return [sys.executable, "-m", "builder.report", *args]


def _report(*args, timeout=180):
    return subprocess.run(_report_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.glob("report.tmp*"))


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
    from harness.notebook import spec_from

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
    from harness.config import MATCHED_WEIGHTS

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


# --- 1. the README's own instructions pass make report's plan step --------------------------

def _readme_parameter_strings() -> list[str]:
    """Every -p sequence the README shows: P="..." values and `...` spans, and the Makefile's help."""
    texts = re.findall(r'P="([^"]*-p [^"]*)"', README.read_text())
    texts += [t for t in re.findall(r"`([^`]*)`", README.read_text()) if t.startswith("-p ")]
    help_line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "variables:" in line)
    texts += re.findall(r"P='([^']*-p [^']*)'", help_line)  # make help's example
    return sorted(set(texts))


def test_the_readme_shows_parameter_examples():
    texts = _readme_parameter_strings()
    assert "-p lr_schedule constant -p lr 1e-3 -p adam_beta2 0.999" in texts and "-p betas [1,8] -p epochs 3" in texts


@pytest.mark.parametrize("text", _readme_parameter_strings())
def test_every_parameter_spelling_in_the_readme_passes_the_plan(text, tmp_path):
    pairs = R.parse_params(text)
    if any(name.isupper() for name, _ in pairs):  # the `-p NAME VALUE` placeholder
        return
    profile, overrides = R.overrides_from(pairs, None)
    names = set(overrides)
    notebooks = [nb for nb in config.NOTEBOOKS if names <= set(parameter_names(nb))]
    assert notebooks, f"no notebook takes all of {sorted(names)}"
    try:
        params = R.plan(notebooks, profile, overrides, tmp_path / "out")
    except ParameterError as e:
        if overrides.get("device") == "cuda" and not torch.cuda.is_available():
            assert "no CUDA GPU is available" in str(e)  # the README says so
            return
        raise
    if "lr" in overrides:
        assert all(params[nb]["lr"] == float(overrides["lr"]) for nb in notebooks)  # 0.001, not '1e-3'


def test_make_report_reads_the_readmes_lr_spelling_as_a_number():
    """The README's own instruction through make: lr 1e-3 passes; the run stops at the deliberately bad
    precision, which validate checks after lr, so no training starts."""
    r = subprocess.run(["make", "report", "NB=01_vae_basic", "P=-p lr_schedule constant -p lr 1e-3 -p precision fp64"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "parameter 'precision' = 'fp64' is invalid" in r.stderr and "'lr'" not in r.stderr


def test_malformed_yaml_names_the_parameter(tmp_path):
    r = _report("--nb", "04_beta_vae", "-p", "betas", "[1,2", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2
    assert "parameter 'betas' = '[1,2' is invalid: it is not valid YAML (" in r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(ParameterError, match=r"parameter 'betas' = '\[1,2' is invalid: it is not valid YAML \("):
        R.overrides_from(R.parse_params("-p betas [1,2"), None)


# --- 4. values that passed validation and failed after training ----------------------------

@pytest.mark.parametrize("nb, kwargs, pattern", [
    ("03_gan", {"n_samples": 100}, r"'n_samples' = 100 is invalid: allowed an integer in \[129, 100000\] \(the FID"),
    ("01_vae_basic", {"n_samples": 128}, r"'n_samples' = 128 .*\[129, 100000\]"),
    ("01_vae_basic", {"seed": 2**32 - 2, "seeds": 4}, r"'seeds' = 4 is invalid: allowed a count that keeps seed \+ seeds - 1"),
    ("04_beta_vae", {"seeds": 0}, r"'seeds' = 0 is invalid: allowed an integer in \[1, 100\]"),
    ("04_beta_vae", {"collapse_betas": [0.0]}, r"'collapse_betas' = 0.0 is invalid: allowed numbers > 0"),
    ("01_vae_basic", {"n_samples": 1_000_000}, r"'n_samples' = 1000000 .*\[129, 100000\]"),
    ("01_vae_basic", {"iwae_k": 0}, r"'iwae_k' = 0 .*\[1, 100000\]"),
    ("01_vae_basic", {"iwae_k": 10**6}, r"'iwae_k' = 1000000 .*\[1, 100000\]"),
    ("01_vae_basic", {"iwae_images": 0}, r"'iwae_images' = 0 .*\[2, 10000\]"),
    ("02_vae_derivation", {"iwae_images": 1}, r"'iwae_images' = 1 .*\[2, 10000\]"),
    ("02_vae_derivation", {"mc_samples": 10**8}, r"'mc_samples' = 100000000 .*\[1000, 10000000\]"),
    ("02_vae_derivation", {"mc_samples": 10}, r"'mc_samples' = 10 .*\[1000, 10000000\]"),
    ("02_vae_derivation", {"iwae_ks": [5], "iwae_k": 5}, r"'iwae_ks' = \[5\] .*at least two different k"),
    ("03_gan", {"seed": -1}, r"'seed' = -1 .*\[0, 4294967295\] \(NumPy's global seed takes 32 bits\)"),
    ("03_gan", {"seed": 2**32}, r"'seed' = 4294967296 .*\[0, 4294967295\]"),
    ("03_gan", {"seed": 2**63}, r"'seed' = 9223372036854775808 .*\[0, 4294967295\]"),
    ("03_gan", {"seed": 1.5}, r"'seed' = 1.5 .*integer in"),
    ("01_vae_basic", {"train_subset": 60_001}, r"'train_subset' = 60001 .*None or an integer in \[1, 60000\]"),
    ("01_vae_basic", {"train_subset": 0}, r"'train_subset' = 0 .*\[1, 60000\]"),
    ("01_vae_basic", {"test_subset": 10_001}, r"'test_subset' = 10001 .*None or an integer in \[129, 10000\]"),
    ("01_vae_basic", {"test_subset": 100}, r"'test_subset' = 100 .*\[129, 10000\] \(the FID's reference"),
    ("03_gan", {"train_subset": 65}, r"'batch_size' = 64 .*last batch of 1 image"),
    ("03_gan", {"batch_size": 1}, r"'batch_size' = 1 .*last batch of 1 image"),
    ("03_gan", {"train_subset": 1}, r"'train_subset' = 1 .*last batch of 1 image"),
    ("03_gan", {"batch_size": 59_999, "train_subset": 60_000}, r"'batch_size' = 59999 .*60000 training images"),
])
def test_values_that_would_fail_after_training_are_refused_before(nb, kwargs, pattern, tmp_path):
    with pytest.raises(ParameterError, match=pattern):
        resolve(nb, "smoke", output_dir=str(tmp_path), **kwargs)


@pytest.mark.parametrize("nb, kwargs", [
    ("01_vae_basic", dict(n_samples=129, train_subset=60_000, test_subset=10_000, seed=2**32 - 1, seeds=1,
                          other_seeds=1)),
    ("01_vae_basic", dict(seed=2**32 - 3, seeds=3)),
    ("01_vae_basic", dict(train_subset="1e3", test_subset="2e2")),  # None in the default profile: still numbers
    ("03_gan", dict(train_subset=66, batch_size=64)),
    ("03_gan", dict(train_subset=None, batch_size=7)),  # 60000 = 7 * 8571 + 3
    ("02_vae_derivation", dict(iwae_ks=[5], iwae_k=1, iwae_images=2, mc_samples=1000)),
])
def test_the_limits_themselves_are_allowed(nb, kwargs, tmp_path):
    cfg = resolve(nb, "default", output_dir=str(tmp_path), **kwargs)
    for k, v in kwargs.items():
        assert cfg[k] == (int(float(v)) if isinstance(v, str) else v)


@pytest.mark.parametrize("profile", config.PROFILE_NAMES)
@pytest.mark.parametrize("nb", config.NOTEBOOKS)
def test_every_profile_passes_its_own_validation(nb, profile, tmp_path):
    cfg = resolve(nb, profile, output_dir=str(tmp_path))
    assert cfg["n_samples"] > 128  # the FID's 128 feature dimensions


# --- 5. unknown parameters through make report; profile and output_dir through make report -----

def test_setup_reads_only_the_notebooks_parameters_from_its_globals(tmp_path, keep_global_state):
    ns = {name: None for name in parameter_names("03_gan")}
    ns.update(profile="smoke", epochs=1, output_dir=str(tmp_path), device="cpu", epoch=3,
              helper=lambda: None)  # any other global of the notebook is none of setup's business
    cfg, _ = notebook.setup("03_gan", ns)
    assert cfg["profile"] == "smoke" and cfg["epochs"] == 1 and "epoch" not in cfg


def test_report_refuses_a_misspelt_parameter_before_running_with_a_hint(tmp_path):
    """papermill alone only warns about a name the parameters cell lacks and the run ignores it: make report
    checks every -p name against the notebooks' parameters cells first."""
    r = _report("--nb", "03_gan", "-p", "epoch", "3", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2, r.stderr
    assert re.search(r"unknown parameter\(s\) \['epoch'\] for \['03_gan'\]; known: \[.*'epochs'.*did you mean "
                     r"'epoch' -> 'epochs'", r.stderr), r.stderr
    assert not (tmp_path / "report").exists() and _leftovers(tmp_path) == []
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) \['iwae_k'\] for \['03_gan'\]"):
        R.plan(["03_gan"], "smoke", {"iwae_k": 5}, tmp_path / "out")  # in harness.config's profile, not in 03's cell


def test_p_profile_is_the_profile_and_p_output_dir_is_refused_with_the_reason(tmp_path):
    params = R.plan(["03_gan"], "smoke", {"profile": "smoke"}, tmp_path / "out")
    assert params["03_gan"]["profile"] == "smoke"
    r = _report("--nb", "03_gan", "-p", "output_dir", "elsewhere", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2
    assert "parameter 'output_dir' = 'elsewhere' is invalid here: make report decides where" in r.stderr
    assert "use papermill directly" in r.stderr
    r = _report("--nb", "03_gan", "-p", "profile", "fast", "--report-dir", str(tmp_path / "report"))
    assert r.returncode == 2 and "parameter 'profile' = 'fast' is invalid: allowed one of" in r.stderr
    assert not (tmp_path / "report").exists() and _leftovers(tmp_path) == []
    assert R.overrides_from(R.parse_params("-p profile smoke -p epochs 2"), None) == ("smoke", {"epochs": 2})
    assert R.overrides_from(R.parse_params("-p profile smoke"), "smoke") == ("smoke", {})
    assert R.overrides_from([], None) == ("default", {})
    with pytest.raises(ParameterError, match=r"'profile' = 'smoke' is invalid: it disagrees with .*'full'"):
        R.overrides_from(R.parse_params("-p profile smoke"), "full")


def test_mps_is_taken_where_it_exists_and_refused_where_not(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert config.resolve_device("mps").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ParameterError, match=r"'device' = 'mps' .*no Apple MPS GPU"):
        config.resolve_device("mps")
    with pytest.raises(ParameterError, match=r"'device' = 'tpu' is invalid: allowed 'auto', 'cpu', 'cuda' / "
                                             r"'cuda:N' or 'mps'"):
        config.resolve_device("tpu")
