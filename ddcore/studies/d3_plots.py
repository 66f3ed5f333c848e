"""Figures of the distributional-distillation notebook: accuracy against storage, the lpc and
latent-size sweep, and the storage model of D3 against the number of classes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..storage import d3_ipc_equivalent


def accuracy_vs_storage(results: pd.DataFrame, title: str, upper: tuple[float, str] | None = None):
    """Accuracy (mean +- sd over students) against the measured IPC-equivalent storage of each set.

    upper: (accuracy in %, label) of a network trained on the whole training set, a dotted line.
    """
    grouped = results.groupby(["method", "budget"], sort=False)
    table = grouped.agg(acc=("accuracy", "mean"), sd=("accuracy", "std"), storage=("ipc_equivalent", "first"))
    table = table.reset_index()
    fig, ax = plt.subplots(figsize=(8.4, 4.3))
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
    if upper is not None:
        ax.axhline(upper[0], color="grey", ls=":", lw=1.5, label=upper[1])
    ax.set_xscale("log")
    ticks = sorted(table.budget.unique())
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("storage, IPC-equivalent (values kept / values of one image per class; log)")
    ax.set_ylabel("final-epoch test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: inside it hid a line
    fig.tight_layout()
    return fig


def sweep_plot(sweep: pd.DataFrame, title: str):
    """Every swept D3 setting (lpc, latent_dim) on one axes: accuracy (mean +- sd over students)
    against the measured storage, one line per setting, each point labelled with its value.

    One axes, so a run that two sweeps share (e.g. lpc = 2 with the default latent size) is one
    point where their lines meet, at one height, instead of a point on two differently scaled axes.
    """
    names = list(dict.fromkeys(sweep.swept))
    short = {"lpc": "lpc", "latent_dim": "z"}
    fig, ax = plt.subplots(figsize=(6.6, 4.3))
    for i, name in enumerate(names):
        rows = sweep[sweep.swept == name].groupby("value", sort=True)
        stats = rows.agg(
            storage=("ipc_equivalent", "first"),
            acc=("accuracy", lambda a: a.mean() * 100),
            sd=("accuracy", lambda a: a.std(ddof=0) * 100),
        ).sort_values("storage")
        label = {"lpc": "priors per class (lpc)", "latent_dim": "latent size z"}.get(name, name)
        ax.errorbar(stats.storage, stats.acc, yerr=stats.sd, marker="o", capsize=3, color=f"C{i}", label=label)
        for value, row in stats.iterrows():
            ax.annotate(
                f"{short.get(name, name)}={value}",
                (row.storage, row.acc),
                textcoords="offset points",
                xytext=(4, 6 - 14 * i),
                fontsize=7,
                color=f"C{i}",
            )
    ax.set_xlabel("storage, IPC-equivalent (measured)")
    ax.set_ylabel("final-epoch test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
