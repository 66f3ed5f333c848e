"""Figures the notebooks show: image grids, accuracy against images per class, and what a
distillation did (its loss curve and its images at a few iterations)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import torch

from ..data import Dataset
from ..published import published
from ..synthetic import SyntheticSet
from .experiment import loss_curve


def image_grid(images: torch.Tensor, labels: torch.Tensor, dataset: Dataset, title: str, max_per_class: int = 10):
    """One row per class, up to `max_per_class` images each, shown as [0, 1] pixels."""
    labels = labels.argmax(1) if labels.is_floating_point() else labels
    per_row = min(max_per_class, int(torch.bincount(labels).max()))
    classes = sorted(set(labels.tolist()))
    fig, axes = plt.subplots(
        len(classes), per_row, squeeze=False, figsize=(0.9 * per_row + 0.8, 0.9 * len(classes) + 0.6)
    )
    pixels = dataset.to_unit(images.detach().cpu()).clamp(0, 1)
    for r, c in enumerate(classes):
        members = (labels == c).nonzero().squeeze(1)[:per_row]
        for k, ax in enumerate(axes[r]):
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if k < len(members):
                img = pixels[members[k]].permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_ylabel(dataset.class_names[c], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_vs_ipc(results: pd.DataFrame, dataset_name: str, title: str, upper: float | None = None):
    """Final-epoch test accuracy (mean and sd over networks) per method against ipc, with the
    published ConvNet numbers as crosses when the data set has them.

    'random' is drawn last, dashed and black, so that it stays visible where a method sits on it;
    the other methods are shifted a little sideways so that equal points do not hide each other.
    upper: accuracy (%) of networks trained on the whole training set, drawn as a dotted line.
    """
    stats = results.groupby(["method", "ipc"], sort=False).accuracy.agg(
        mean=lambda a: a.mean() * 100, sd=lambda a: a.std(ddof=0) * 100
    )
    methods = list(dict.fromkeys(results.method))
    others = [m for m in methods if m != "random"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, method in enumerate(others + [m for m in methods if m == "random"]):
        rows = stats.loc[method].sort_index()
        shift = 1.04 ** (i - (len(others) - 1) / 2) if method != "random" else 1.0
        style = dict(color="black", ls="--", marker="s", zorder=4) if method == "random" else dict(marker="o")
        ax.errorbar(rows.index * shift, rows["mean"], yerr=rows["sd"], capsize=3, label=method, **style)
    if upper is not None:
        ax.axhline(upper, color="grey", ls=":", lw=1.5, label=f"whole training set ({upper:.1f}%)")
    for i, (method, points) in enumerate(published(dataset_name).items()):
        ipcs = sorted(points)
        ax.scatter(
            ipcs,
            [points[k] for k in ipcs],
            marker="x",
            s=60,
            color=f"C{i + 5}",
            label=f"{method.upper()} (published, full {dataset_name})",
            zorder=5,
        )
    ax.set_xscale("log")
    ipcs = sorted(set(results.ipc) | {k for pts in published(dataset_name).values() for k in pts})
    ax.set_xticks(ipcs, [str(k) for k in ipcs])
    ax.minorticks_off()
    ax.set_xlabel("images per class (log scale; methods shifted sideways to stay visible)")
    ax.set_ylabel("final-epoch test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def distillation_progress(syn: SyntheticSet, dataset: Dataset, title: str):
    """What distillation did: the loss against the iteration (left; raw and a running mean) and,
    right, the first image of each class at every snapshot the set kept (rows; first row = start).

    The set needs its snapshots and loss curve (studies.experiment.run_grid's `snapshots`).
    """
    curve = loss_curve(syn)
    kept = sorted(set(syn.meta.get("snapshots", [])))
    if not kept:
        raise KeyError("this set kept no snapshots; distill it with run_grid(..., snapshots={method: [0, ...]})")
    final = int(syn.meta.get("config", {}).get("iterations", kept[-1]))
    rows = [(n, syn.snapshot(n).images) for n in kept if n < final] + [(final, syn.images)]
    labels = syn.hard_labels
    classes = sorted(set(labels.tolist()))
    first = torch.stack([(labels == c).nonzero()[0, 0] for c in classes])
    fig = plt.figure(figsize=(3.6 + 0.75 * len(classes), max(3.0, 0.8 * len(rows) + 1.0)))
    grid = fig.add_gridspec(len(rows), len(classes) + 4)
    ax = fig.add_subplot(grid[:, :3])
    ax.plot(curve.iteration, curve.loss, color="C0", alpha=0.35, lw=0.8, label="loss")
    window = max(1, len(curve) // 10)
    ax.plot(curve.iteration, curve.loss.rolling(window, min_periods=1).mean(), color="C0", label=f"mean of {window}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for r, (n, images) in enumerate(rows):
        pixels = dataset.to_unit(images[first]).clamp(0, 1)
        for k in range(len(classes)):
            cell = fig.add_subplot(grid[r, 4 + k])
            img = pixels[k].permute(1, 2, 0).numpy()
            cell.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            cell.set_xticks([]), cell.set_yticks([])
            if k == 0:
                cell.set_ylabel("start" if n == 0 else f"it {n}", rotation=0, ha="right", va="center", fontsize=8)
            if r == 0:
                cell.set_title(dataset.class_names[classes[k]], fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
