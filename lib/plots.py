"""Figures for the notebooks: image grids, training curves, bars, traversals, interpolations, a 2-D latent
space (codes by class, decoded manifold), rate-distortion, per-dimension KL. Each returns a Figure (the live
latent-space explorer is ``harness.live.latent_explorer``)."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .data import IMAGE_SIDE as S, as_float


def _show(ax, images, nrow: int, pad: int = 1):
    """Draw images [N, 28, 28] on ``ax`` as one mosaic, ``nrow`` images per row, on a grey (0.5) background."""
    x = as_float(images).cpu()[:, 0].numpy()
    out = np.full((int(np.ceil(len(x) / nrow)) * (S + pad) + pad, nrow * (S + pad) + pad), 0.5)
    for i, img in enumerate(x):
        r, c = divmod(i, nrow)
        out[pad + r * (S + pad) : pad + r * (S + pad) + S, pad + c * (S + pad) : pad + c * (S + pad) + S] = img
    ax.imshow(out, cmap="gray", vmin=0, vmax=1, interpolation="nearest")


def _finish(fig, ax=None, title: str | None = None, fontsize=None):
    """Title ``ax`` (if given a title) and lay the figure out."""
    if title:
        ax.set_title(title, **({"fontsize": fontsize} if fontsize else {}))
    fig.tight_layout()
    return fig


def panels(image_sets: Sequence, titles: Sequence[str], nrow: int = 8, size: float = 3.2, suptitle: str | None = None):
    """Image grids side by side (e.g. the three losses' final samples)."""
    fig, axes = plt.subplots(1, len(image_sets), figsize=(size * len(image_sets), size + 0.4), squeeze=False)
    for ax, imgs, t in zip(axes[0], image_sets, titles):
        _show(ax, imgs, nrow)
        ax.set_axis_off()
        if t:
            ax.set_title(t, fontsize=10)
    if suptitle:
        fig.suptitle(suptitle)
    return _finish(fig)


def progression(grids, epochs: Sequence[int] | None = None, title: str | None = None):
    """16 samples from one fixed z after each of up to 6 evenly spread epochs: the training progression."""
    grids = torch.as_tensor(grids)
    pick = sorted(set(np.linspace(0, len(grids) - 1, min(6, len(grids))).round().astype(int).tolist()))
    labels = [f"epoch {(epochs[i] if epochs else i + 1)}" for i in pick]
    return panels([grids[i][:16] for i in pick], labels, nrow=4, size=2.0, suptitle=title)


def curves(histories: dict[str, list[dict]], keys: Sequence[str], ylabel: str, title: str | None = None):
    """One line per (run, key) over epochs: one colour per model (the part of a run's name before ", seed"),
    a marker per training seed, dashed for training and solid for test numbers."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    groups = list(dict.fromkeys(name.split(", seed")[0] for name in histories))
    seen: dict[str, int] = {}
    for name, hist in histories.items():
        group = name.split(", seed")[0]
        i = seen[group] = seen.get(group, -1) + 1
        for k in keys:
            style = "--" if k.startswith("train") else "-"
            colour = groups.index(group) if len(groups) > 1 else list(keys).index(k) if style == "-" else 0
            ax.plot([h["epoch"] for h in hist], [h[k] for h in hist], style, color=f"C{colour % 10}",
                    marker="os^Dvx"[i % 6], ms=3, label=f"{name}: {k.replace('_', ' ')}" if len(keys) > 1 else name)
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(histories) * len(keys) > 8 else 1)
    return _finish(fig, ax, title)


def bars(values: dict[str, float | Sequence[float]], ylabel: str, title: str | None = None, ref: float | None = None):
    """One bar per model: a number, or one value per training seed (bar = mean, error bar = SD, dots = seeds);
    ``ref``: a dashed line for real digits' value (or the FID's floor, real training vs test digits)."""
    per = {k: [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])] for k, v in values.items()}
    sds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in per.values()]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(list(per), [float(np.mean(v)) for v in per.values()], yerr=sds, capsize=4,
           color=[f"C{i}" for i in range(len(per))], alpha=0.8)
    for i, v in enumerate(per.values()):
        if len(v) > 1:
            ax.plot([i] * len(v), v, "k.", ms=4)
    if ref is not None:
        ax.axhline(ref, color="k", ls="--", lw=1, label="real digits")
        ax.legend(fontsize=8)
    ax.set_ylabel(ylabel)
    return _finish(fig, ax, title)


def compare_rows(rows: Sequence, labels: Sequence[str], n: int = 10):
    """Rows of ``n`` images (e.g. clean / noisy / reconstruction), one labelled row each."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.6, len(rows) * 0.75 + 0.2), squeeze=False)
    for ax, imgs, lab in zip(axes[:, 0], rows, labels):
        _show(ax, as_float(imgs)[:n], n)
        ax.set_axis_off()
        ax.set_title(lab, fontsize=8, loc="left")
    return _finish(fig)


@torch.no_grad()
def traversal(model, base_z: torch.Tensor, title: str | None = None):
    """Each row sweeps one latent dimension from -3 to 3 (others fixed at base_z)."""
    d, values = base_z.numel(), np.linspace(-3, 3, 9)
    z = base_z.reshape(1, 1, d).repeat(d, len(values), 1)
    for j in range(d):
        z[j, :, j] = torch.as_tensor(values, dtype=z.dtype)
    imgs = model.decode(z.reshape(-1, d).to(next(model.parameters()).device)).cpu()
    fig, ax = plt.subplots(figsize=(len(values) * 0.45, d * 0.45 + 0.4))
    _show(ax, imgs, len(values))
    ax.set_yticks([(S + 1) * j + 15 for j in range(d)], [f"z{j}" for j in range(d)], fontsize=7)
    ax.set_xticks([(S + 1) * i + 15 for i in range(len(values))], [f"{v:+.1f}" for v in values], fontsize=6)
    ax.set_frame_on(False)
    return _finish(fig, ax, title, 9)


@torch.no_grad()
def interpolation(model, x_pairs, steps: int = 9, title: str | None = None,
                  row_labels: Sequence[str] | None = None):
    """One row per pair (x_a, x_b): x_a, then decode(z(t)) with z(t) = (1 - t) mu_a + t mu_b for
    ``steps`` values of t from 0 to 1 (mu = the encoder's mean), then x_b."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    t = torch.linspace(0, 1, steps)
    rows = []
    for a, b in x_pairs:
        x = torch.cat([as_float(a), as_float(b)]).to(device)  # [2, 1, 28, 28]
        mu = model.encode(x)[0]
        w = t.to(device, mu.dtype)[:, None]
        rows += [x[:1].cpu(), model.decode((1 - w) * mu[0] + w * mu[1]).cpu(), x[1:].cpu()]
    model.train(was_training)
    n, cell = steps + 2, S + 1
    fig, ax = plt.subplots(figsize=(n * 0.5, len(x_pairs) * 0.5 + 0.5))
    _show(ax, torch.cat(rows), n)
    for col in (1, n - 1):  # set the real digits apart from the decoded path
        ax.axvline(col * cell + 0.5, color="tab:orange", lw=1.5)
    ax.set_xticks([cell * i + 15 for i in range(n)], ["source"] + [f"{v:.2f}" for v in t.tolist()] + ["target"],
                  fontsize=6)
    ax.set_xlabel("t", fontsize=7)
    if row_labels is not None:
        ax.set_yticks([cell * j + 15 for j in range(len(x_pairs))], list(row_labels), fontsize=7)
    else:
        ax.set_yticks([])
    ax.set_frame_on(False)
    return _finish(fig, ax, title, 9)


def first_of_class(labels) -> dict[int, int]:
    """Digit class -> the index of its first image in ``labels``."""
    labels = torch.as_tensor(labels).tolist()
    return {c: labels.index(c) for c in sorted(set(labels))}


def class_interpolation(model, images, labels, title: str, pairs=((0, 1), (2, 7), (3, 8), (4, 9)), steps: int = 9):
    """``interpolation`` between the first image of class a and of class b for each pair (a, b) whose classes
    are both in ``labels``; None when no pair is."""
    first = first_of_class(labels)
    pairs = [(a, b) for a, b in pairs if a in first and b in first]
    if not pairs:
        return None
    return interpolation(model, [(images[first[a]], images[first[b]]) for a, b in pairs], steps=steps,
                         row_labels=[f"{a} → {b}" for a, b in pairs], title=title)


def latent_scatter(mu, labels, title: str | None = None, box: float | None = None):
    """2-D codes mu [N, 2] as points coloured by digit class (tab10); ``box`` draws the square
    [-box, box]^2 (e.g. the extent of ``manifold``)."""
    mu = torch.as_tensor(mu).detach().cpu().float().numpy()
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    pts = ax.scatter(mu[:, 0], mu[:, 1], c=torch.as_tensor(labels).cpu().numpy(), cmap="tab10", vmin=-0.5,
                     vmax=9.5, s=3, alpha=0.6, linewidths=0, rasterized=True)
    cbar = fig.colorbar(pts, ax=ax, ticks=range(10))
    cbar.set_label("digit class")
    if cbar.solids is not None:
        cbar.solids.set_alpha(1)
    if box is not None:
        ax.add_patch(plt.Rectangle((-box, -box), 2 * box, 2 * box, fill=False, ec="k", ls="--", lw=1))
    ax.set(xlabel="$\\mu_1$", ylabel="$\\mu_2$")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    return _finish(fig, ax, title, 10)


@torch.no_grad()
def manifold(model, n: int = 15, p: tuple[float, float] = (0.05, 0.95), title: str | None = None):
    """The decoded 2-D manifold: z_i = Phi^-1(q) for n quantiles q evenly spaced in ``p`` (Kingma &
    Welling 2014, Fig. 4); z_1 grows to the right, z_2 upwards."""
    was_training = model.training
    model.eval()
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(p[0], p[1], n))
    z1, z2 = torch.meshgrid(z, z.flip(0), indexing="xy")  # rows: z_2 from high (top) to low
    imgs = model.decode(torch.stack([z1.reshape(-1), z2.reshape(-1)], 1).to(next(model.parameters()).device)).cpu()
    model.train(was_training)
    fig, ax = plt.subplots(figsize=(6.2, 6.2))
    _show(ax, imgs, n, pad=0)
    ticks = [S * i + 13.5 for i in range(n)]
    ax.set_xticks(ticks, [f"{v:.2f}" for v in z.tolist()], fontsize=6, rotation=90)
    ax.set_yticks(ticks, [f"{v:.2f}" for v in z.flip(0).tolist()], fontsize=6)
    ax.set(xlabel="$z_1$", ylabel="$z_2$")
    return _finish(fig, ax, title, 10)


def rate_distortion(points: dict[str, list[tuple[float, float]]]):
    """Distortion against rate, one point per training seed, the models' means joined by a line."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    means = {}
    for i, (name, pts) in enumerate(points.items()):
        ax.plot(*zip(*pts), "o", color=f"C{i % 10}", alpha=0.6)
        means[name] = tuple(np.mean(pts, axis=0))
        ax.annotate(name, means[name], textcoords="offset points", xytext=(5, 5))
    ax.plot(*zip(*means.values()), "k-", lw=1)
    ax.set(xlabel="rate: KL(q(z|x) || p(z)) [nats]", ylabel="distortion: -E log p(x|z) [nats]")
    ax.grid(alpha=0.3)
    return _finish(fig, ax, "rate-distortion on the test set (one point per seed)")


def kl_per_dimension(per_dim: dict[str, torch.Tensor]):
    """Grouped bars: each model's KL per latent dimension, dimensions sorted by KL."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    w = 0.8 / len(per_dim)
    for i, (name, kl) in enumerate(per_dim.items()):
        ax.bar(torch.arange(len(kl)) + i * w, kl.sort(descending=True).values, w, label=name)
    ax.set(xlabel="latent dimension (sorted by KL)", ylabel="KL [nats]")
    ax.legend()
    return _finish(fig)
