"""What needs a person at the kernel: ``in_jupyterlab`` tells one from papermill, nbval and ``make report``, and
``latent_explorer`` is 04_beta_vae's live latent space (sliders over z, the decoded digit redrawn as they move)."""
from __future__ import annotations

import io
import os
import sys

import matplotlib.pyplot as plt
import numpy as np
import torch

from lib.progress import PROGRESS_FILE


def in_jupyterlab() -> bool:
    """Whether a person runs this kernel: JupyterLab's execute requests name their cell (``cellId``) and Colab's
    kernel is google.colab's; papermill's and nbval's are neither, and ``make report`` sets GENMNIST_PROGRESS_FILE."""
    try:
        from IPython import get_ipython
        from ipykernel.zmqshell import ZMQInteractiveShell
    except ImportError:
        return False
    shell = get_ipython()
    return (isinstance(shell, ZMQInteractiveShell) and PROGRESS_FILE not in os.environ
            and ("cellId" in shell.kernel.get_parent().get("metadata", {}) or "google.colab" in sys.modules))


def latent_explorer(model, kl: torch.Tensor, codes: dict[int, torch.Tensor], start: int | None = None):
    """A JupyterLab widget: one slider per latent dimension (most informative first, labelled with its KL), a
    menu of starting codes (z = 0 or the code μ of a test digit) and the decoded image, redrawn live. Outside
    JupyterLab (``in_jupyterlab``) it prints where to open it and returns None."""
    if not in_jupyterlab():
        print("The latent-space explorer (sliders over z) runs in JupyterLab only: open notebooks/04_beta_vae.ipynb "
              "there.")
        return None
    import ipywidgets as widgets

    model = model.eval()
    device = next(model.parameters()).device
    order = kl.argsort(descending=True).tolist()
    sliders = [widgets.FloatSlider(value=0.0, min=-3.0, max=3.0, step=0.05, description=f"z{j} · {kl[j]:.1f}",
                                   readout_format=".2f", style={"description_width": "70px"}) for j in order]
    menu = widgets.Dropdown(options=[("z = 0", None)] + [(f"μ of the first test {c}", c) for c in codes],
                            value=start if start in codes else None, description="start",
                            style={"description_width": "70px"})
    image = widgets.Image(format="png", width=196, height=196)

    def render(*_):
        z = torch.zeros(1, model.latent_dim)
        z[0, order] = torch.tensor([s.value for s in sliders])
        with torch.inference_mode():
            img = model.decode(z.to(device))[0, 0].cpu().numpy()
        buf = io.BytesIO()
        plt.imsave(buf, np.kron(img, np.ones((7, 7))), cmap="gray", vmin=0, vmax=1, format="png")
        image.value = buf.getvalue()

    def jump(*_):  # move the sliders to the chosen code (each move redraws)
        code = torch.zeros(model.latent_dim) if menu.value is None else codes[menu.value].clamp(-3, 3)
        for j, s in zip(order, sliders):
            s.value = round(float(code[j]), 2)
        render()  # also when no slider moved

    menu.observe(jump, "value")
    for s in sliders:
        s.observe(render, "value")
    jump()
    return widgets.HBox([widgets.VBox([menu, *sliders]), image])
