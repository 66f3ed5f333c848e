"""The robust-distillation comparison of notebook 02: each method with and without the robust risk,
on a data set and on its rare-subgroup variant, graded by the robust-distillation paper's metrics.

- `make_benchmarks`: the plain data set and its rare-subgroup variant (`subpop.make_rare_subgroups`);
- `robust_variants`: {'dm': options, 'dm+robust': options with a RobustConfig}, for each base method;
- `run_robust_grid`: distill (cached) and evaluate every (benchmark, method, ipc), one row per network;
- `robust_sweep`: one method's robust variant with alpha, k, ... set to each of a few values;
- `summary_table`, `robust_gains`, `claim_verdicts`, `conclusion_text`: the tidy table, the
  robust-minus-plain differences with the noise they must beat, and what the numbers say;
- `pca_frame`: a 2-D PCA view of one class's real images, its clusters and the synthetic images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..checks import check_choice, check_int, check_writable_dir
from ..cluster import kmeans
from ..data import Dataset
from ..distill import method_config
from ..evaluate import CORRUPTIONS, EvalConfig, accuracy_by_group, cluster_min_accuracy, corrupt, student_for, summarize
from ..io import atomic_write_bytes
from ..robust import RobustConfig
from ..subpop import make_rare_subgroups
from ..synthetic import SyntheticSet
from ..train import predict
from ..verdicts import noise as shared_noise
from ..verdicts import verdict_word
from .experiment import cell_name, distill_cached

__all__ = [
    "Benchmark",
    "make_benchmarks",
    "robust_variants",
    "evaluate_cell",
    "run_robust_grid",
    "robust_sweep",
    "summary_table",
    "robust_gains",
    "gains_table",
    "claim_verdicts",
    "conclusion_text",
    "pca_frame",
    "METRICS",
    "METRIC_NAMES",
]

# Metrics of the table, in order, with their display names.
METRIC_NAMES = {
    "accuracy": "average",
    "cluster_min_accuracy": "cluster min",
    "cluster_mean_accuracy": "cluster mean",
    "accuracy_gaussian_noise": "noise",
    "accuracy_blur": "blur",
    "accuracy_invert": "inverted",
    "rare_group_accuracy": "rare subgroup",
    "worst_group_accuracy": "worst subgroup",
}
METRICS = tuple(METRIC_NAMES)
ROBUST_SUFFIX = "+robust"


@dataclass(eq=False)
class Benchmark:
    """A data set to distil and test on, with its subgroup ids (None on the plain data set)."""

    name: str  # 'plain' or 'rare'
    dataset: Dataset
    train_groups: torch.Tensor | None  # (N_train,) 0 common, 1 rare
    test_groups: torch.Tensor | None  # (N_test,) 0 common, 1 rare


def make_benchmarks(
    data: Dataset, rare_fraction: float = 0.1, transform: str = "invert", seed: int = 0
) -> dict[str, Benchmark]:
    """{'plain': the data set as it is, 'rare': its rare-subgroup variant (see ddcore.subpop)}.

    The rare images are drawn independently of a distillation with the same seed (see
    ddcore.subpop.RARE_SEED_OFFSET). The variant's name carries the
    transform and the fraction (e.g. 'mnist5k_rare-invert-0p1', no dot: file names are built from it),
    so cached sets of other variants are never mistaken for its own.
    """
    rare, train_groups, test_groups = make_rare_subgroups(data, rare_fraction, transform, seed)
    fraction = f"{rare_fraction:g}".replace(".", "p")
    rare = dataclasses.replace(rare, name=f"{rare.name}-{transform}-{fraction}")
    return {"plain": Benchmark("plain", data, None, None), "rare": Benchmark("rare", rare, train_groups, test_groups)}


def robust_variants(base: dict[str, dict], robust: RobustConfig) -> dict[str, tuple[str, dict]]:
    """Each base method twice: {'dm': ('dm', options), 'dm+robust': ('dm', options + robust)}.

    Raises if a method has no `robust` option (only dc and dm have one) or an option is unknown.
    """
    variants = {}
    for name, options in base.items():
        if "robust" in options:
            raise ValueError(f"options of {name!r} already hold 'robust'; pass the base method's options")
        method_config(name, **options)  # a typo fails here, before any work
        try:
            method_config(name, **options, robust=robust)
        except TypeError:
            raise ValueError(f"method {name!r} has no robust variant; use one of 'dc', 'dm'") from None
        variants[name] = (name, dict(options))
        variants[name + ROBUST_SUFFIX] = (name, {**options, "robust": robust})
    return variants


# --- evaluation ---
def evaluate_cell(
    syn: SyntheticSet,
    bench: Benchmark,
    cfg: EvalConfig,
    seed: int = 0,
    device=None,
    k: int = 10,
    corruptions: tuple[str, ...] = CORRUPTIONS,
) -> pd.DataFrame:
    """One row per student: the metrics of `evaluate.evaluate_robustness` plus cluster_<i>.

    Columns: accuracy, cluster_min_accuracy, cluster_mean_accuracy, cluster_<i> (accuracy in test
    cluster i), accuracy_<corruption>, and on the rare benchmark common_group_accuracy,
    rare_group_accuracy and worst_group_accuracy. Students, test clusters and corruptions are
    those of evaluate_robustness (same seeds), so the shared columns agree with it.
    """
    for kind in corruptions:
        check_choice("corruption", kind, CORRUPTIONS)
    data = bench.dataset
    unit = data.to_unit(data.images_test)
    corrupted = {kind: data.normalize(corrupt(unit, kind, seed)) for kind in corruptions}
    rows = []
    for n in range(cfg.num_nets):
        net = student_for(syn, data, cfg, seed + n, device)
        rows.append(_student_row(net, syn, bench, corrupted, k, seed + n, n, cfg))
    return pd.DataFrame(rows)


def _student_row(net, syn, bench, corrupted, k, seed, n, cfg) -> dict:
    data, groups = bench.dataset, bench.test_groups
    pred = predict(net, data.images_test)
    clustered = cluster_min_accuracy(pred, data, k, seed=0)
    row = {
        "benchmark": bench.name,
        "method": syn.meta.get("method"),
        "ipc": syn.meta.get("ipc"),
        "net": n,
        "seed": seed,
        "epochs": cfg.train.epochs,
        "accuracy": float((pred == data.labels_test).double().mean()),
        "cluster_min_accuracy": clustered["min"],
        "cluster_mean_accuracy": clustered["mean"],
    }
    row.update({f"cluster_{i}": acc for i, acc in enumerate(clustered["per_cluster"])})
    for kind, images in corrupted.items():
        row[f"accuracy_{kind}"] = float((predict(net, images) == data.labels_test).double().mean())
    if groups is not None:
        per_group = accuracy_by_group(pred, data.labels_test, groups)
        row["common_group_accuracy"], row["rare_group_accuracy"] = per_group[0], per_group[1]
        row["worst_group_accuracy"] = min(per_group.values())
    return row


def _evaluate_cached(syn, bench, cfg, seed, device, k, corruptions, cache_dir) -> pd.DataFrame:
    """evaluate_cell, or the rows a previous call with the same inputs saved in cache_dir."""
    if cache_dir is None:
        return evaluate_cell(syn, bench, cfg, seed, device, k, corruptions)
    content = hashlib.sha1(syn.images.numpy().tobytes()).hexdigest()  # the set itself, not only its recipe
    key = repr((cfg, syn.meta.get("config_repr"), content, k, tuple(corruptions), bench.dataset.name))
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    stem = cell_name(bench.dataset, str(syn.meta["method"]), syn.meta["ipc"], seed)
    path = cache_dir / f"{stem}_robust_eval_{digest}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            return pd.DataFrame(saved["rows"])
    df = evaluate_cell(syn, bench, cfg, seed, device, k, corruptions)
    atomic_write_bytes(path, json.dumps({"key": key, "rows": df.to_dict("records")}).encode())
    return df


def _cache(cache_dir: str | Path | None) -> Path | None:
    if cache_dir is None:
        return None
    check_writable_dir("cache_dir", cache_dir)
    return Path(cache_dir)


def _distill(label, method, options, bench, ipc, seed, device, cache_dir, progress, snapshots=()) -> SyntheticSet:
    tag = label[len(method) :]  # '+robust' or ''
    return distill_cached(method, bench.dataset, ipc, seed, options, device, cache_dir, progress, tag, snapshots)


def run_robust_grid(
    benchmarks: dict[str, Benchmark],
    variants: dict[str, tuple[str, dict]],
    ipcs: list[int],
    eval_cfg: EvalConfig,
    seed: int = 0,
    device=None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    k: int = 10,
    corruptions: tuple[str, ...] | dict[str, tuple[str, ...]] = CORRUPTIONS,
    snapshots: tuple[int, ...] = (),
) -> tuple[pd.DataFrame, dict]:
    """Distill and evaluate every (benchmark, method variant, ipc); see `evaluate_cell` for the rows.

    corruptions: graded on every benchmark, or a dict from benchmark name to its own (missing: none).
    snapshots: iterations whose images every set keeps, with its loss curve (experiment.distill_cached);
    (0,) is enough for experiment.image_drift.

    Synthetic sets and evaluations are cached in cache_dir (a stopped run resumes). Returns the
    rows (with distill_seconds) and the synthetic sets by (benchmark, variant, ipc).
    """
    cache_dir = _cache(cache_dir)
    frames, sets = [], {}
    for bench in benchmarks.values():
        for ipc in ipcs:
            for label, (method, options) in variants.items():
                syn = _distill(label, method, options, bench, ipc, seed, device, cache_dir, progress, snapshots)
                sets[(bench.name, label, ipc)] = syn
                kinds = corruptions.get(bench.name, ()) if isinstance(corruptions, dict) else corruptions
                df = _evaluate_cached(syn, bench, eval_cfg, seed, device, k, tuple(kinds), cache_dir)
                frames.append(df.assign(distill_seconds=syn.meta.get("seconds")))
    return pd.concat(frames, ignore_index=True), sets


def robust_sweep(
    bench: Benchmark,
    method: str,
    options: dict,
    robust: RobustConfig,
    ipc: int,
    values: dict[str, list],
    eval_cfg: EvalConfig,
    seed: int = 0,
    device=None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    k: int = 10,
) -> pd.DataFrame:
    """The robust variant of `method` with one RobustConfig field at a time set to each value.

    values: e.g. {'alpha': [0.2, 1.0], 'k': [1, 10]}; the other fields stay as in `robust`.
    Returns evaluate_cell's rows (no corruptions) with columns `param` and `value`.
    """
    fields = {f.name for f in dataclasses.fields(RobustConfig)}
    for param in values:
        check_choice("sweep parameter", param, sorted(fields))
    if "k" in values and robust.clustering != "kmeans":
        raise ValueError(
            "sweeping k needs clustering='kmeans'; with 'synthetic' the cells are the "
            "synthetic images and k is not used"
        )
    cache_dir, frames = _cache(cache_dir), []
    for param, vals in values.items():
        for value in vals:
            opts = {**options, "robust": dataclasses.replace(robust, **{param: value})}
            syn = _distill(method + ROBUST_SUFFIX, method, opts, bench, ipc, seed, device, cache_dir, progress)
            df = _evaluate_cached(syn, bench, eval_cfg, seed, device, k, (), cache_dir)
            frames.append(df.assign(param=param, value=value))
    return pd.concat(frames, ignore_index=True)


# --- tables and conclusions ---
def _present(results: pd.DataFrame, metrics) -> list[str]:
    return [m for m in metrics if m in results.columns]


def summary_table(results: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """One row per (benchmark, method, ipc): each metric as 'mean +- std' in percent over networks.

    Metrics that do not apply (the subgroups of the plain data set) show 'n/a'.
    """
    metrics = _present(results, metrics)
    summary = summarize(results, metrics, by=("benchmark", "method", "ipc"))
    out = summary[["benchmark", "method", "ipc", "nets"]].copy()
    for m in metrics:
        mean, std = summary[f"{m}_mean"], summary[f"{m}_std"]
        text = mean.map("{:.1f}".format) + " +- " + std.map("{:.1f}".format)
        out[METRIC_NAMES.get(m, m)] = text.where(mean.notna(), "n/a")
    return out


def robust_gains(results: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """Robust minus plain, in percentage points, per (benchmark, base method, ipc, metric).

    noise = sqrt(std_plain^2 + std_robust^2) over networks (population std); `beyond_noise` says
    whether |diff| exceeds it. Pairs are '<m>' and '<m>+robust'; metrics that do not apply drop out.
    """
    metrics = _present(results, metrics)
    s = summarize(results, metrics, by=("benchmark", "method", "ipc"))
    rob = s[s.method.str.endswith(ROBUST_SUFFIX)].assign(method=lambda d: d.method.str[: -len(ROBUST_SUFFIX)])
    pairs = s.merge(rob, on=("benchmark", "method", "ipc"), suffixes=("", "_robust"))
    rows = []
    for _, p in pairs.iterrows():
        for m in metrics:
            if pd.isna(p[f"{m}_mean"]) or pd.isna(p[f"{m}_mean_robust"]):
                continue
            diff = p[f"{m}_mean_robust"] - p[f"{m}_mean"]
            noise = shared_noise(p[f"{m}_std"], p[f"{m}_std_robust"])  # ddcore.verdicts' rule
            rows.append(
                {
                    "benchmark": p.benchmark,
                    "method": p.method,
                    "ipc": p.ipc,
                    "metric": m,
                    "plain": p[f"{m}_mean"],
                    "robust": p[f"{m}_mean_robust"],
                    "diff": diff,
                    "noise": noise,
                    "beyond_noise": bool(abs(diff) > noise),
                }
            )
    return pd.DataFrame(rows)


def gains_table(gains: pd.DataFrame) -> pd.DataFrame:
    """robust_gains as one row per (benchmark, method, ipc), cells '+1.2 (0.8)': difference (noise)."""
    cells = gains.assign(cell=gains["diff"].map("{:+.1f}".format) + gains.noise.map(" ({:.1f})".format))
    table = cells.pivot(index=["benchmark", "method", "ipc"], columns="metric", values="cell")
    order = [m for m in METRICS if m in table.columns]
    return table[order].rename(columns=METRIC_NAMES).fillna("n/a").reset_index().rename_axis(columns=None)


def claim_verdicts(gains: pd.DataFrame) -> pd.DataFrame:
    """Per (benchmark, method, ipc): does robust beat plain as the paper claims?

    The claim holds when the worst-cluster accuracy (and, on the rare benchmark, the rare-subgroup
    accuracy) rises by more than its noise while the average accuracy does not fall by more than
    its noise.
    """
    rows = []
    for (bench, method, ipc), g in gains.groupby(["benchmark", "method", "ipc"], sort=False):
        d = g.set_index("metric")
        rare_up, worst_up = _rises(d, "rare_group_accuracy"), _rises(d, "cluster_min_accuracy")
        avg_kept = bool(d.loc["accuracy", "diff"] >= -d.loc["accuracy", "noise"])
        holds = bool(worst_up) and avg_kept and rare_up is not False
        rows.append(
            {
                "benchmark": bench,
                "method": method,
                "ipc": ipc,
                "rare_up": rare_up,
                "worst_cluster_up": worst_up,
                "average_kept": avg_kept,
                "claim_holds": holds,
            }
        )
    return pd.DataFrame(rows)


def _rises(d: pd.DataFrame, metric: str) -> bool | None:
    """Whether `metric` rose by more than its noise; None when it was not measured."""
    return bool(d.loc[metric, "diff"] > d.loc[metric, "noise"]) if metric in d.index else None


def conclusion_text(
    gains: pd.DataFrame,
    verdicts: pd.DataFrame,
    metrics: tuple[str, ...] = ("accuracy", "cluster_min_accuracy", "rare_group_accuracy"),
) -> str:
    """The measured differences, each with its noise and a word, and how many comparisons show the claim."""
    lines = []
    for _, v in verdicts.iterrows():
        g = gains[(gains.benchmark == v.benchmark) & (gains.method == v.method) & (gains.ipc == v.ipc)]
        parts = [
            f"{METRIC_NAMES[m]} {r.diff:+.1f} (noise {r.noise:.1f}, {verdict_word(r.diff, r.noise)})"
            for m in metrics
            for r in g[g.metric == m].itertuples()
        ]
        lines.append(
            f"{v.benchmark:>5} {v.method}+robust vs {v.method}, ipc {v.ipc}: "
            + "; ".join(parts)
            + f" -> claim {'holds' if v.claim_holds else 'not shown'}"
        )
    lines.append(
        f"The claim holds in {int(verdicts.claim_holds.sum())} of {len(verdicts)} comparisons "
        "(worst cluster and rare subgroup up beyond noise, average not down beyond noise)."
    )
    return "\n".join(lines)


# --- a 2-D view of one class ---
def pca_frame(bench: Benchmark, cls: int, k: int, sets: dict[str, SyntheticSet], seed: int = 0) -> pd.DataFrame:
    """2-D PCA of class `cls`'s training pixels with K-means clusters and synthetic images on top.

    Columns: pc1, pc2, source ('real' or the set's label), cluster (K-means id of real images in
    pixel space, -1 for synthetic), group ('common', 'rare' or 'synthetic'). PCA is fitted on the
    real images only; df.attrs['explained'] holds its explained-variance ratios.
    """
    from sklearn.decomposition import PCA

    data = bench.dataset
    check_int("cls", cls, low=0, high=data.num_classes - 1)
    mask = data.labels_train == cls
    real = data.images_train[mask].flatten(1)
    pca = PCA(n_components=2, random_state=seed).fit(real.numpy())
    groups = bench.train_groups[mask] if bench.train_groups is not None else torch.zeros(len(real), dtype=torch.long)
    xy = pca.transform(real.numpy())
    frames = [
        pd.DataFrame(
            {
                "pc1": xy[:, 0],
                "pc2": xy[:, 1],
                "source": "real",
                "cluster": kmeans(real, k, seed).ids.numpy(),
                "group": np.where(groups.numpy() == 1, "rare", "common"),
            }
        )
    ]
    for label, syn in sets.items():
        images = syn.images[syn.hard_labels == cls].flatten(1)
        xy = pca.transform(images.numpy())
        frames.append(
            pd.DataFrame({"pc1": xy[:, 0], "pc2": xy[:, 1], "source": label, "cluster": -1, "group": "synthetic"})
        )
    out = pd.concat(frames, ignore_index=True)
    out.attrs["explained"] = pca.explained_variance_ratio_.tolist()
    return out
