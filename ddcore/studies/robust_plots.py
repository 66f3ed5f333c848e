"""Figures of notebook 02 (robust distillation): the 2-D toy (ddcore.toy), accuracy per test cluster
and per subgroup, the alpha / k sweep, one class's synthetic images per method, and a PCA view of one class.

Each function takes the tidy frames of `ddcore.studies.robust_experiment` (toy_plot: ddcore.toy's runs) and returns a
matplotlib Figure.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from matplotlib.lines import Line2D

from ..data import Dataset
from ..synthetic import SyntheticSet
from ..toy import ToyData, ToyRun, distance_to_rare
from .robust_experiment import METRIC_NAMES

__all__ = ["toy_plot", "cluster_accuracy_plot", "subgroup_accuracy_plot", "sweep_plot", "class_images_plot", "pca_plot"]


def toy_plot(data: ToyData, runs: dict[str, ToyRun], title: str):
    """The 2-D toy, one panel per objective: real points coloured by class (rare ones as triangles),
    each rare mode ringed, and each synthetic point's path from its start (hollow circle) to its end
    (star). The panel title gives, per class, the distance of its nearest point to the rare mode."""
    fig, axes = plt.subplots(1, len(runs), squeeze=False, figsize=(3.6 * len(runs), 3.9), sharex=True, sharey=True)
    for ax, (name, run) in zip(axes[0], runs.items()):
        for c in range(len(data.rare_modes)):
            colour = f"C{c}"
            for rare, marker, size, alpha in ((False, "o", 5, 0.25), (True, "^", 12, 0.6)):
                pts = data.X[(data.y == c) & (data.rare == rare)]
                ax.scatter(pts[:, 0], pts[:, 1], s=size, marker=marker, color=colour, alpha=alpha, linewidths=0)
            ax.scatter(
                *data.rare_modes[c].tolist(),
                s=500,
                facecolors="none",
                edgecolors=colour,
                linewidths=1.5,
                linestyle="--",
            )
            for j in torch.nonzero(run.labels == c).flatten().tolist():
                path = run.path[:, j]
                ax.plot(path[:, 0], path[:, 1], color="black", lw=0.6, alpha=0.45)
                ax.scatter(*path[0].tolist(), s=30, facecolors="none", edgecolors="black", zorder=4)
                ax.scatter(*path[-1].tolist(), s=140, marker="*", color=colour, edgecolors="black", zorder=5)
        nearest = distance_to_rare(run, data).min(1).values
        ax.set_title(f"{name}\nnearest to rare mode: " + ", ".join(f"{d:.2f}" for d in nearest.tolist()), fontsize=8)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], marker="o", ls="", color="grey", alpha=0.5, label="real, common mode"),
        Line2D([], [], marker="^", ls="", color="grey", alpha=0.5, label="real, rare mode"),
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            markersize=14,
            markerfacecolor="none",
            markeredgecolor="grey",
            label="rare mode centre",
        ),
        Line2D([], [], marker="o", ls="-", color="black", markerfacecolor="none", label="synthetic: start, path"),
        Line2D(
            [],
            [],
            marker="*",
            ls="",
            markersize=11,
            color="grey",
            markeredgecolor="black",
            label="synthetic: end (class colour)",
        ),
    ]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _long(results: pd.DataFrame, columns: dict[str, str], var: str) -> pd.DataFrame:
    """Columns -> rows: one row per (student, column), accuracy in percent, `var` names the column."""
    df = results.melt(
        id_vars=["benchmark", "method", "ipc", "net"], value_vars=list(columns), var_name=var, value_name="accuracy_pct"
    ).dropna(subset=["accuracy_pct"])
    return df.assign(accuracy_pct=df.accuracy_pct * 100, **{var: df[var].map(columns)})


def _grid(rows: list, cols: list, width: float, height: float):
    return plt.subplots(
        len(rows), len(cols), squeeze=False, sharey=True, figsize=(width * len(cols), height * len(rows))
    )


def _legend_outside(axes_row, title: str) -> None:
    """One legend, right of the last panel of the row, and none on the others (it would hide bars)."""
    for ax in axes_row[:-1]:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    axes_row[-1].legend(fontsize=7, title=title, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def cluster_accuracy_plot(results: pd.DataFrame, title: str):
    """Accuracy in each K-means cluster of the test set (bars: mean, ticks: sd over students);
    one panel per (benchmark, ipc). The lowest bar of a method is its cluster-min accuracy."""
    clusters = sorted(
        (c for c in results.columns if c.startswith("cluster_") and c[8:].isdigit()), key=lambda c: int(c[8:])
    )
    df = _long(results, {c: int(c[8:]) for c in clusters}, "cluster")
    benches, ipcs = list(df.benchmark.unique()), sorted(df.ipc.unique())
    fig, axes = _grid(benches, ipcs, 6.0, 3.2)
    for r, bench in enumerate(benches):
        for c, ipc in enumerate(ipcs):
            ax = axes[r][c]
            sns.barplot(
                data=df[(df.benchmark == bench) & (df.ipc == ipc)],
                x="cluster",
                y="accuracy_pct",
                hue="method",
                errorbar="sd",
                ax=ax,
                err_kws={"linewidth": 1},
            )
            ax.set_title(f"{bench} benchmark, ipc {ipc}", fontsize=9)
            ax.set_xlabel("test cluster (K-means on pixels, labels ignored)")
            ax.set_ylabel("accuracy in cluster (%)")
            ax.set_ylim(0, 100)
            ax.grid(axis="y", alpha=0.3)
        _legend_outside(axes[r], "method")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def subgroup_accuracy_plot(results: pd.DataFrame, title: str):
    """Accuracy on the common and the rare subgroup of the rare benchmark, per method; one panel per ipc."""
    rare = results[results.benchmark == "rare"]
    df = _long(
        rare, {"common_group_accuracy": "common (as is)", "rare_group_accuracy": "rare (transformed)"}, "subgroup"
    )
    ipcs = sorted(df.ipc.unique())
    fig, axes = _grid([0], ipcs, 4.6, 3.4)
    for c, ipc in enumerate(ipcs):
        ax = axes[0][c]
        sns.barplot(
            data=df[df.ipc == ipc],
            x="method",
            y="accuracy_pct",
            hue="subgroup",
            errorbar="sd",
            ax=ax,
            err_kws={"linewidth": 1},
        )
        ax.set_title(f"rare benchmark, ipc {ipc}", fontsize=9)
        ax.set_xlabel("method")
        ax.set_ylabel("test accuracy in subgroup (%)")
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    _legend_outside(axes[0], "test subgroup")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def sweep_plot(
    sweep: pd.DataFrame,
    title: str,
    metrics: tuple[str, ...] = ("accuracy", "rare_group_accuracy", "cluster_min_accuracy"),
):
    """Metrics (mean and sd over students) against each swept RobustConfig field, one panel per field."""
    metrics = [m for m in metrics if m in sweep.columns and sweep[m].notna().any()]
    df = sweep.melt(
        id_vars=["param", "value", "net"], value_vars=metrics, var_name="metric", value_name="accuracy_pct"
    ).dropna(subset=["accuracy_pct"])
    df = df.assign(accuracy_pct=df.accuracy_pct * 100, metric=df.metric.map(METRIC_NAMES))
    params = list(sweep.param.unique())
    fig, axes = _grid([0], params, 4.4, 3.3)
    for c, param in enumerate(params):
        ax = axes[0][c]
        part = df[df.param == param].astype({"value": float})
        sns.lineplot(
            data=part,
            x="value",
            y="accuracy_pct",
            hue="metric",
            style="metric",
            markers=True,
            dashes=False,
            errorbar="sd",
            ax=ax,
        )
        values = sorted(part.value.unique())
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.set_xlabel({"alpha": "CVaR level alpha", "k": "clusters per class k"}.get(param, param))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    _legend_outside(axes[0], "metric (mean, sd band)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def class_images_plot(sets: dict[str, SyntheticSet], cls: int, dataset: Dataset, title: str):
    """The synthetic images of class `cls`: one row per set (e.g. dm, dm+robust), as [0, 1] pixels."""
    rows = {label: syn.images[syn.hard_labels == cls] for label, syn in sets.items()}
    per_row = max(len(x) for x in rows.values())
    fig, axes = plt.subplots(len(rows), per_row, squeeze=False, figsize=(0.95 * per_row + 1.4, 1.0 * len(rows) + 0.5))
    for r, (label, images) in enumerate(rows.items()):
        pixels = dataset.to_unit(images.detach().cpu()).clamp(0, 1)
        for j, ax in enumerate(axes[r]):
            ax.set_xticks([]), ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j < len(pixels):
                img = pixels[j].permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


_SYN_MARKERS = ["*", "P", "D", "X", "s", "v"]


def pca_plot(frame: pd.DataFrame, title: str):
    """`robust_experiment.pca_frame` drawn: real images coloured by K-means cluster (dots common,
    triangles rare), synthetic images as large black-edged markers, one marker per set."""
    fig, ax = plt.subplots(figsize=(6.8, 5.2))
    real = frame[frame.source == "real"]
    palette = plt.get_cmap("tab10")
    for group, marker, size in (("common", "o", 10), ("rare", "^", 22)):
        part = real[real.group == group]
        ax.scatter(
            part.pc1,
            part.pc2,
            c=[palette(i % 10) for i in part.cluster],
            marker=marker,
            s=size,
            alpha=0.55,
            linewidths=0,
        )
    handles = [
        Line2D([], [], marker="o", ls="", color="grey", label="real, common (colour: K-means cluster)"),
        Line2D([], [], marker="^", ls="", color="grey", label="real, rare subgroup"),
    ]
    for i, source in enumerate(s for s in frame.source.unique() if s != "real"):
        part = frame[frame.source == source]
        marker, color = _SYN_MARKERS[i % len(_SYN_MARKERS)], f"C{i}"
        size = 560 * 0.5**i  # halving, so that sets at the same place nest and stay visible
        ax.scatter(part.pc1, part.pc2, marker=marker, s=size, c=color, edgecolors="black", linewidths=1.0, zorder=5 + i)
        handles.append(
            Line2D(
                [],
                [],
                marker=marker,
                ls="",
                markersize=11,
                color=color,
                markeredgecolor="black",
                label=f"synthetic: {source}",
            )
        )
    explained = frame.attrs.get("explained", [float("nan")] * 2)
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f}% of pixel variance)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}% of pixel variance)")
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
