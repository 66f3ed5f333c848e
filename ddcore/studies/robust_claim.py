"""The robust-distillation claim, graded on the long runs of bench/robust_table.py.

The claim (the robust issue): a robust variant gives better rare-subgroup and worst-cluster
accuracy than its plain method while its average accuracy stays within 1 point. Each (variant,
ipc) pools its students over its distillation seeds and is compared with its plain method on the
same seeds; differences use ddcore.verdicts' noise rule.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..verdicts import compare

METRICS = {"accuracy": "average", "rare_group_accuracy": "rare subgroup", "cluster_min_accuracy": "cluster min"}
CELL = ["benchmark", "variant", "ipc", "seed", "width", "epochs", "iterations"]
AVERAGE_TOLERANCE = 1.0  # points the average may lose
LINE_STYLES = ("-", "--", ":", "-.")  # the longest runs solid
FLOOR = 10.0  # chance on the 10-class benchmarks: a metric with plain and robust both at or below it is at its floor


def load_robust_rows(paths: list[Path]) -> pd.DataFrame:
    """Every row of the given JSONL files, the last one of each cell kept (reruns append)."""
    records = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    if not records:
        return pd.DataFrame(columns=CELL)
    return pd.DataFrame(records).drop_duplicates(subset=CELL, keep="last").reset_index(drop=True)


def pooled(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (benchmark, variant, ipc, iterations): mean and population sd (%) of each metric over all
    students of all seeds, the seeds, and how far the images moved from their initialisation."""
    out = []
    for (bench, variant, ipc, its), g in rows.groupby(["benchmark", "variant", "ipc", "iterations"], sort=False):
        line = {
            "benchmark": bench,
            "variant": variant,
            "ipc": ipc,
            "seeds": len(g),
            "students": int(sum(len(a) for a in g.accuracy)),
            "iterations": int(its),
            "moved": float(g.moved_relative.mean()),
        }
        for m in METRICS:
            values = 100 * np.concatenate([np.asarray(a, dtype=float) for a in g[m]])
            line[f"{m}_mean"], line[f"{m}_sd"] = float(values.mean()), float(values.std())
        out.append(line)
    return pd.DataFrame(out)


def claim_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Each robust variant against its plain method ('dm+cm' against 'dm'), per ipc and number of
    iterations, on the same distillation seeds (seeds differ by more than the variants sometimes
    do), with a verdict."""
    if rows.empty:
        return pd.DataFrame()
    lines = []
    for (bench, variant, ipc, its), g in rows.groupby(["benchmark", "variant", "ipc", "iterations"], sort=False):
        base = variant.split("+")[0]
        same_cell = (rows.benchmark == bench) & (rows.ipc == ipc) & (rows.iterations == its)
        plain = rows[same_cell & (rows.variant == base) & rows.seed.isin(g.seed)]
        if variant == base or plain.seed.nunique() < g.seed.nunique():
            continue
        b, r = pooled(plain).iloc[0], pooled(g).iloc[0]
        diffs = {m: compare(b[f"{m}_mean"], b[f"{m}_sd"], r[f"{m}_mean"], r[f"{m}_sd"]) for m in METRICS}
        line = {
            "benchmark": bench,
            "IPC": int(ipc),
            "variant": variant,
            "seeds x students": f"{int(r.seeds)} x {int(r.students) // max(int(r.seeds), 1)}",
            "iterations": int(r.iterations),
        }
        floor = {m for m in METRICS if m != "accuracy" and max(b[f"{m}_mean"], r[f"{m}_mean"]) <= FLOOR}
        for m, name in METRICS.items():  # plain -> robust (difference, noise), in %
            line[name] = (
                f"{b[f'{m}_mean']:.1f} -> {r[f'{m}_mean']:.1f} ({diffs[m].diff:+.1f}, noise {diffs[m].noise:.1f})"
                + (" at floor" if m in floor else "")
            )
        # the seeds set both runs' initial images and batches, so robust - plain on each seed (its students'
        # mean) shows the effect without the seeds' spread, which the pooled noise above includes
        line["rare, paired by seed"] = " / ".join(f"{d:+.1f}" for d in paired_by_seed(plain, g, "rare_group_accuracy"))
        line["images moved"] = f"{b.moved:.2f} / {r.moved:.2f}"
        line["verdict"] = claim_verdict(diffs, floor)
        lines.append(line)
    if not lines:
        return pd.DataFrame()
    return pd.DataFrame(lines).sort_values(["benchmark", "IPC", "iterations"], kind="stable").reset_index(drop=True)


def paired_by_seed(plain: pd.DataFrame, robust: pd.DataFrame, metric: str) -> list[float]:
    """Robust minus plain (%) of the students' mean of `metric`, seed by seed (the robust rows' seeds)."""

    def means(rows):
        return {int(s): 100 * float(np.mean(v)) for s, v in zip(rows.seed, rows[metric])}

    p, r = means(plain), means(robust)
    return [r[s] - p[s] for s in sorted(r)]


def claim_verdict(diffs: dict, floor: set[str] = frozenset()) -> str:
    """'supported' when rare subgroup and cluster min rise beyond noise, off their floor (`floor`:
    the metrics with plain and robust both at or below chance), and the average loses at most
    AVERAGE_TOLERANCE points; otherwise what failed."""
    failed = [
        f"{METRICS[m]} at floor" if m in floor else f"{METRICS[m]} not up beyond noise"
        for m in ("rare_group_accuracy", "cluster_min_accuracy")
        if diffs[m].word != "better" or m in floor
    ]
    if diffs["accuracy"].diff < -AVERAGE_TOLERANCE:
        failed.append(f"average down {-diffs['accuracy'].diff:.1f}")
    return "supported" if not failed else "not supported (" + ", ".join(failed) + ")"


def plot_claim(rows: pd.DataFrame, ipc: int):
    """Left: each variant's average, rare-subgroup and cluster-min accuracy (mean +- sd over all
    students of all seeds) at one IPC; right: its distillation loss over iterations (seed mean,
    divided by the first iteration's), to show whether it flattened."""
    import matplotlib.pyplot as plt

    rows = rows[rows.ipc == ipc]
    stats = pooled(rows)
    fig, (ax, ax_loss) = plt.subplots(
        1, 2, figsize=(5 + 0.9 * len(stats) + 7, 3.8), gridspec_kw={"width_ratios": [1 + 0.18 * len(stats), 1]}
    )
    width = 0.8 / len(METRICS)
    for i, (m, name) in enumerate(METRICS.items()):
        x = np.arange(len(stats)) + (i - 1) * width
        ax.bar(x, stats[f"{m}_mean"], width, yerr=stats[f"{m}_sd"], capsize=3, label=name)
    several = stats.iterations.nunique() > 1  # then each label says its iterations
    labels = [
        v.replace("@", "\n@") + (f"\n{its} it." if several else "") + f"\n({n} seed{'s' * (n > 1)})"
        for v, its, n in zip(stats.variant, stats.iterations, stats.seeds)
    ]
    ax.set_xticks(np.arange(len(stats)), labels, fontsize=8)
    ax.axhline(FLOOR, color="grey", lw=0.8, ls=":")
    ax.set(ylabel="test accuracy (%)", ylim=(0, 112), title=f"IPC {ipc}: mean +- sd over all students of the seeds")
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize=8, loc="upper center", ncol=len(METRICS))  # in the band above 100%: on no bar
    # one colour per variant and one line style per run length, so that no two curves look alike
    tab20 = plt.get_cmap("tab20").colors  # its dark shades first, then the light ones
    colours = dict(zip(stats.variant.unique(), tab20[::2] + tab20[1::2]))
    lengths = sorted(stats.iterations.unique(), reverse=True)
    styles = {its: LINE_STYLES[i % len(LINE_STYLES)] for i, its in enumerate(lengths)}
    for (variant, its), g in rows.groupby(["variant", "iterations"], sort=False):
        curves = [pd.Series(dict(losses)) for losses in g.get("losses", []) if isinstance(losses, list) and losses]
        if curves:
            mean = pd.concat(curves, axis=1).mean(axis=1).rolling(20, min_periods=1).mean()
            label = variant + (f", {its} it." if several else "")
            ax_loss.plot(mean.index, mean / mean.iloc[0], color=colours[variant], ls=styles[its], label=label)
    ax_loss.set(xlabel="distillation iteration", ylabel="loss / first (20-it. mean)", title="distillation loss")
    ax_loss.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: no curve hidden
    fig.tight_layout()
    return fig
