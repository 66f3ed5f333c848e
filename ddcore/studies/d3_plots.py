"""Figures of the distributional-distillation notebook: accuracy against storage, the lpc and
latent-size sweep, and the storage model of D3 against the number of classes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..storage import d3_ipc_equivalent


def accuracy_vs_storage(results: pd.DataFrame, title: str):
    """Accuracy (mean +- sd over students) against the measured IPC-equivalent storage of each set."""
    grouped = results.groupby(["method", "budget"], sort=False)
    table = grouped.agg(acc=("accuracy", "mean"), sd=("accuracy", "std"), storage=("ipc_equivalent", "first"))
    table = table.reset_index()
    fig, ax = plt.subplots(figsize=(6.6, 4.3))
    for i, (method, rows) in enumerate(table.groupby("method", sort=False)):
        rows = rows.sort_values("storage")
        ax.errorbar(
            rows.storage,
            rows.acc * 100,
            yerr=rows.sd.fillna(0) * 100,
            marker="o",
            capsize=3,
            label=method,
            color=f"C{i}",
        )
    ax.set_xscale("log")
    ticks = sorted(table.budget.unique())
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("storage, IPC-equivalent (values kept / values of one image per class; log)")
    ax.set_ylabel("final-epoch test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_plot(sweep: pd.DataFrame, title: str):
    """One panel per swept D3 setting (lpc, latent_dim): accuracy with its storage annotated."""
    names = list(dict.fromkeys(sweep.swept))
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = sweep[sweep.swept == name]
        sns.pointplot(
            data=rows.assign(accuracy_pct=rows.accuracy * 100),
            x="value",
            y="accuracy_pct",
            errorbar="sd",
            capsize=0.1,
            ax=ax,
        )
        storage = rows.groupby("value").ipc_equivalent.first()
        for k, (value, ipc_eq) in enumerate(storage.items()):
            ax.annotate(
                f"{ipc_eq:.2f} IPC-eq",
                (k, rows[rows.value == value].accuracy.mean() * 100),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=7,
            )
        ax.set_xlabel({"lpc": "latent priors per class (lpc)", "latent_dim": "latent size z"}.get(name, name))
        ax.set_ylabel("final-epoch test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def storage_model_plot(
    decoder_values: dict[str, int],
    lpc: int,
    latent_dim: int,
    image_values: int,
    measured: pd.DataFrame | None = None,
    max_classes: int = 1000,
):
    """IPC-equivalent of D3 against the number of classes (the storage model), one curve per
    decoder size, with the measured sets (columns num_classes, ipc_equivalent, label) on top."""
    classes = np.unique(np.geomspace(2, max_classes, 60).astype(int))
    fig, ax = plt.subplots(figsize=(6.6, 4.3))
    for i, (name, values) in enumerate(decoder_values.items()):
        ipc_eq = [d3_ipc_equivalent(int(c), lpc, latent_dim, values, image_values) for c in classes]
        ax.plot(classes, ipc_eq, color=f"C{i}", label=f"{name} ({values:,} decoder weights)")
    ax.axhline(
        lpc,
        color="grey",
        ls="--",
        lw=1,
        label=f"{lpc} real image{'s' if lpc > 1 else ''} per class (same storage as lpc images)",
    )
    if measured is not None:
        ax.scatter(
            measured.num_classes,
            measured.ipc_equivalent,
            color="k",
            zorder=5,
            marker="x",
            label="measured sets (ddcore.storage)",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of classes (log)")
    ax.set_ylabel("IPC-equivalent storage (log)")
    ax.set_title(f"D3 storage model: lpc={lpc}, z={latent_dim}, one decoder, soft labels", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
