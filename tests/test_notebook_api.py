"""harness.notebook, what the tier notebooks call: ``setup`` reads and validates their parameters, ``table``
and ``summary`` format results."""

import numpy as np
import pytest
import torch

from harness import notebook
from harness.config import ParameterError, parameter_names




def _papermill_globals(nb, **values):
    """A notebook's globals after its parameters cell (every parameter None = "the profile's value")
    and papermill's injected cell, plus the unrelated names any namespace holds."""
    ns = {name: None for name in parameter_names(nb)}
    ns["profile"] = "default"  # the parameters cell's literal
    ns.update(__name__="__main__", np=np, torch=torch, unrelated=[1, 2, 3])
    ns.update(values)
    return ns


def test_setup_reads_the_parameters_from_the_namespace(tmp_path, keep_global_state):
    ns = _papermill_globals("04_beta_vae", profile="smoke", epochs=2, betas=[1.0, 3.0], seed=5, device="cpu",
                            output_dir=str(tmp_path / "out"))
    cfg, ctx = notebook.setup("04_beta_vae", ns)
    assert cfg["profile"] == "smoke"
    assert cfg["epochs"] == 2 and cfg["betas"] == [1.0, 3.0] and cfg["seed"] == 5  # from the namespace
    assert cfg["batch_size"] == 64 and cfg["train_subset"] == 512  # None there: the smoke profile's values
    assert "unrelated" not in cfg and "np" not in cfg
    assert cfg["device"] == torch.device("cpu") == ctx.device
    assert ctx.cfg is cfg and ctx.notebook == "04_beta_vae" and ctx.threads == torch.get_num_threads()
    assert ctx.out == tmp_path / "out" and (ctx.out / "figures").is_dir() and (ctx.out / "runs").is_dir()
    a = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(a, torch.rand(3)), "setup seeds torch's global generator with the notebook's seed"


def test_setup_without_a_profile_parameter_takes_the_default_profile(tmp_path, keep_global_state):
    cfg, _ = notebook.setup("03_gan", {"output_dir": str(tmp_path), "device": "cpu"})
    assert cfg["profile"] == "default" and cfg["epochs"] == 20


@pytest.mark.parametrize("nb, values, pattern", [
    ("01_vae_basic", dict(epochs=0), r"parameter 'epochs' = 0 is invalid: allowed an integer in \[1, 10000\]"),
    ("01_vae_basic", dict(losses=["bce", "huber"]), r"parameter 'losses' = 'huber' is invalid"),
    ("04_beta_vae", dict(betas=[1.0, -1.0]), r"parameter 'betas' = -1.0 is invalid"),
    ("05_noisy_data", dict(noise_amounts=[2.0]), r"parameter 'noise_amounts' = 2.0 is invalid"),
    ("03_gan", dict(profile="fast"), r"parameter 'profile' = 'fast' is invalid"),
])
def test_setup_rejects_a_bad_value_naming_the_parameter_before_any_work(tmp_path, keep_global_state, nb, values,
                                                                        pattern):
    out = tmp_path / "out"
    ns = _papermill_globals(nb, profile="smoke", output_dir=str(out), device="cpu")
    ns.update(values)
    with pytest.raises(ParameterError, match=pattern):
        notebook.setup(nb, ns)
    assert not out.exists(), "a bad parameter is reported before anything is written"


def test_table_formats_floats_and_missing_cells():
    md = notebook.table([{"loss": "bce", "bound": 101.234, "kl": 0.001}, {"loss": "mse", "bound": 0.0}])
    assert md.splitlines() == [
        "| loss | bound | kl |",
        "|---|---|---|",
        "| bce | 101.23 | 1.00e-03 |",
        "| mse | 0.00 |  |",
    ]
