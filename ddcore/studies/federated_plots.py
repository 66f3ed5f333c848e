"""Figures of notebook 04 (subtask decomposition): cost against the number of subtasks S (wall
time, peak memory), accuracy and storage against S, and the accuracy on each subtask's classes.

Each function takes the tables of `ddcore.studies.federated_experiment` and returns a matplotlib Figure.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from .federated_experiment import STORAGE_PARTS

__all__ = ["cost_plot", "accuracy_storage_plot", "subtask_accuracy_plot"]


def _s_axis(ax, subtasks) -> None:
    """One evenly spaced tick per value of S (positions 0, 1, ...; see _at)."""
    values = sorted(set(subtasks))
    ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_xlabel("subtasks S (class groups)")
    ax.grid(alpha=0.3)


def _at(subtasks: pd.Series, every, shift: float = 0.0) -> list[float]:
    """x positions of `subtasks` on an axis made by _s_axis(ax, every)."""
    values = sorted(set(every))
    return [values.index(v) + shift for v in subtasks]


def _label_points(ax, xs, ys, fmt: str, color, at=None) -> None:
    """Each value written above its point (`at`: other heights to write it at)."""
    for x, y, h in zip(xs, ys, ys if at is None else at):
        ax.annotate(
            fmt.format(y), (x, h), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7, color=color
        )


def cost_plot(table: pd.DataFrame, title: str):
    """Left: wall time of each run against S, one line per worker count (solid: the torchrun
    command end to end; dotted: inside the run, start-up excluded). Right: peak resident memory
    of the busiest worker (solid) and of the least busy one (dotted). Worker counts are drawn
    side by side around each S, so that their points and values do not hide each other."""
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10.5, 3.9))
    counts = sorted(table.workers.unique())
    for i, (n, runs) in enumerate(table.sort_values("subtasks").groupby("workers")):
        color, x = f"C{i}", _at(runs.subtasks, table.subtasks, 0.2 * (counts.index(n) - (len(counts) - 1) / 2))
        ax_t.plot(x, runs.wall_s, "o-", color=color, label=f"{n} worker(s), end to end")
        ax_t.plot(x, runs.run_s, "s:", color=color, label=f"{n} worker(s), inside the run")
        _label_points(ax_t, x, runs.wall_s, "{:.0f} s", color)
        ax_m.plot(x, runs.peak_rss_mib, "o-", color=color, label=f"{n} worker(s), busiest worker")
        ax_m.plot(x, runs.least_rss_mib, "s:", color=color, label=f"{n} worker(s), least busy worker")
        _label_points(ax_m, x, runs.peak_rss_mib, "{:.0f}", color)
    ax_t.set_ylabel("wall time (s)")
    ax_t.set_ylim(0, table[["wall_s", "run_s"]].max().max() * 1.2)
    ax_t.set_title("wall time of the distributed run", fontsize=9)
    ax_m.set_ylabel("peak resident memory of a worker (MiB)")
    ax_m.set_ylim(0, table.peak_rss_mib.max() * 1.2)
    ax_m.set_title("peak memory of one worker (ru_maxrss)", fontsize=9)
    for ax in (ax_t, ax_m):
        _s_axis(ax, table.subtasks)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_storage_plot(table: pd.DataFrame, accuracy: pd.DataFrame, title: str):
    """Left: test accuracy of the aggregated set against S (mean, bars: sd over students).
    Right: its storage in IPC-equivalents against S, stacked by part (priors, decoders, labels,
    images): every subtask keeps its own decoder."""
    fig, (ax_a, ax_s) = plt.subplots(1, 2, figsize=(10.5, 3.9))
    acc = accuracy.sort_values("subtasks")
    x = _at(acc.subtasks, table.subtasks)
    ax_a.errorbar(x, acc.accuracy_mean, yerr=acc.accuracy_std, fmt="o-", capsize=4, color="C0")
    _label_points(ax_a, x, acc.accuracy_mean, "{:.1f}", "C0", at=acc.accuracy_mean + acc.accuracy_std)
    ax_a.set_ylabel("final-epoch test accuracy (%)")
    ax_a.set_ylim(0, 100)
    ax_a.set_title(f"accuracy of the aggregated set ({int(acc.nets.max())} students, mean +- sd)", fontsize=9)
    runs = table.sort_values("workers").drop_duplicates("subtasks", keep="last").sort_values("subtasks")
    x, bottom = _at(runs.subtasks, table.subtasks), pd.Series(0.0, index=runs.index)
    for i, part in enumerate(STORAGE_PARTS):
        values = runs[f"ipc_{part}"]
        if values.sum() > 0:
            ax_s.bar(x, values, bottom=bottom, width=0.5, color=f"C{i + 1}", label=part)
            bottom += values
    for xi, total, nbytes in zip(x, runs.ipc_equivalent, runs["bytes"]):
        ax_s.annotate(
            f"{total:.2f}\n{nbytes / 1024:.0f} KiB",
            (xi, total),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=7,
        )
    ax_s.set_ylim(0, runs.ipc_equivalent.max() * 1.3)
    ax_s.set_ylabel("storage (IPC-equivalents)")
    ax_s.set_title("storage of the aggregated set, by part", fontsize=9)
    ax_s.legend(fontsize=7, loc="upper left")
    for ax in (ax_a, ax_s):
        _s_axis(ax, table.subtasks)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def subtask_accuracy_plot(per_subtask: pd.DataFrame, accuracy: pd.DataFrame, title: str):
    """One panel per S: test accuracy on the classes of each subtask (bars: mean, ticks: sd over
    students), the aggregated set's accuracy on all test images as a dashed line."""
    values = sorted(per_subtask.subtasks.unique())
    widths = [max(2, (per_subtask.subtasks == s).sum()) for s in values]
    fig, axes = plt.subplots(
        1,
        len(values),
        sharey=True,
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
        figsize=(1.2 * sum(widths) + 1.5, 3.6),
    )
    overall = accuracy.set_index("subtasks").accuracy_mean
    for ax, s in zip(axes[0], values):
        rows = per_subtask[per_subtask.subtasks == s].sort_values("subtask")
        ax.bar(range(len(rows)), rows.accuracy_mean, yerr=rows.accuracy_std, capsize=3, color="C0", width=0.6)
        _label_points(
            ax,
            range(len(rows)),
            rows.accuracy_mean,
            "{:.1f}",
            "black",
            at=rows.accuracy_mean + rows.accuracy_std.fillna(0),
        )  # above the sd tick
        ax.axhline(overall[s], color="C3", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(rows)), [f"{i}\nclasses\n{c}" for i, c in zip(rows.subtask, rows.classes)], fontsize=7)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_title(f"S = {s}; all test images: {overall[s]:.1f}% (dashed)", fontsize=8)
        ax.set_xlabel("subtask")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy on the subtask's classes (%)", fontsize=8)
    axes[0][0].set_ylim(0, 105)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
