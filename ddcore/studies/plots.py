"""Figures the notebooks show: image grids and accuracy against images per class."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

from ..data import Dataset
from ..published import published


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


def accuracy_vs_ipc(results: pd.DataFrame, dataset_name: str, title: str):
    """Final-epoch test accuracy (mean and std over networks) per method against ipc, with the
    published ConvNet numbers as crosses when the data set has them."""
    df = results.assign(accuracy_pct=results["accuracy"] * 100)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sns.lineplot(data=df, x="ipc", y="accuracy_pct", hue="method", marker="o", errorbar="sd", ax=ax)
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
    ipcs = sorted(set(df.ipc) | {k for pts in published(dataset_name).values() for k in pts})
    ax.set_xticks(ipcs, [str(k) for k in ipcs])
    ax.minorticks_off()
    ax.set_xlabel("images per class (log scale)")
    ax.set_ylabel("final-epoch test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
