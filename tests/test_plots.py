"""The figure helpers that decide something: which pairs to interpolate (lib.plots), whether the live explorer runs
(harness.live)."""
import matplotlib
import torch

from harness import live
from lib import plots
from lib.models import ConvVAE

matplotlib.use("Agg")


def test_class_interpolation_uses_the_first_image_of_each_class_and_skips_absent_classes(monkeypatch):
    seen = {}
    monkeypatch.setattr(plots, "interpolation", lambda model, pairs, **kw: seen.update(pairs=pairs, **kw) or "fig")
    images, labels = torch.arange(6.0), torch.tensor([3, 0, 1, 8, 0, 1])
    assert plots.class_interpolation(None, images, labels, "t") == "fig"
    assert [(a.item(), b.item()) for a, b in seen["pairs"]] == [(1.0, 2.0), (0.0, 3.0)]
    assert seen["row_labels"] == ["0 → 1", "3 → 8"] and seen["steps"] == 9 and seen["title"] == "t"
    assert plots.class_interpolation(None, images, torch.tensor([5, 5, 6, 6, 6, 6]), "t") is None


def test_class_interpolation_draws_a_figure():
    torch.manual_seed(0)
    fig = plots.class_interpolation(ConvVAE(latent_dim=2), torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 7]), "t",
                                    steps=3)
    assert len(fig.axes[0].get_yticklabels()) == 2


def test_latent_explorer_runs_only_in_jupyterlab(capsys, monkeypatch):
    import IPython
    from ipykernel.zmqshell import ZMQInteractiveShell

    assert not live.in_jupyterlab()  # pytest is no Jupyter kernel
    assert live.latent_explorer(None, torch.zeros(2), {}) is None
    assert "runs in JupyterLab only" in capsys.readouterr().out
    metadata = {}  # what a cell's execute request carries: JupyterLab adds its cellId, papermill and nbval nothing
    kernel = type("Kernel", (), {"get_parent": lambda self: {"metadata": metadata}})()
    shell = type("Shell", (ZMQInteractiveShell,), {"kernel": kernel})
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell.__new__(shell))
    monkeypatch.delenv("GENMNIST_PROGRESS_FILE", raising=False)
    assert not live.in_jupyterlab()
    metadata["cellId"] = "c1"
    assert live.in_jupyterlab()
    monkeypatch.setenv("GENMNIST_PROGRESS_FILE", "progress.log")  # make report
    assert not live.in_jupyterlab()
