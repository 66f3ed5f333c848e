"""What the notebooks' conclusion cells compute: every comparison under ddcore.verdicts' one noise
rule, and the sentences that say where a result sits at its floor or a run is too short to decide.

- `compare_to`: each method against a reference method at each ipc (or budget), with the verdict;
- `drift_table`, `still_falling`, `at_floor`: did the images move, has the loss flattened, is a
  metric at its floor (chance, or 0 for the worst cluster);
- `baselines_conclusion` (notebook 01), `toy_conclusion` and `robust_caveats` (02),
  `d3_conclusion` and `sweep_conclusion` (03): the text, built only from the numbers passed in.
"""

from __future__ import annotations

import math

import pandas as pd

from ..data import Dataset
from ..evaluate import summarize
from ..toy import distance_to_rare
from ..verdicts import compare
from .experiment import image_drift

__all__ = [
    "FLOOR_MARGIN",
    "MOVED",
    "FALLING",
    "compare_to",
    "students_line",
    "drift_table",
    "still_falling",
    "at_floor",
    "baselines_conclusion",
    "toy_conclusion",
    "robust_caveats",
    "d3_conclusion",
    "sweep_conclusion",
]

FLOOR_MARGIN = 2.0  # points above its floor within which a metric counts as sitting at its floor
MOVED = 0.02  # RMS pixel change (0-1 scale) below which a set has barely left its initialisation
FALLING = 0.05  # relative drop of the loss from one quarter of a run to the last that counts as still falling


def _text(diff: float, noise: float, word: str) -> str:
    return f"{diff:+.1f} (noise {noise:.1f}, {word})"


def students_line(results: pd.DataFrame, by: tuple[str, ...]) -> list[str]:
    """A sentence when some set has fewer than two students: with no spread the noise rule cannot judge."""
    fewest = int(results.groupby(list(by)).size().min())
    if fewest >= 2:
        return []
    return [
        f"Some sets were graded by {fewest} student only: with no spread over students every difference "
        "passes the noise rule, so these verdicts mean nothing; use num_nets of 2 or more."
    ]


def compare_to(results: pd.DataFrame, reference: str, by: str = "ipc", metric: str = "accuracy") -> pd.DataFrame:
    """Each method against `reference` at each value of `by`, in percentage points.

    Columns: method, <by>, mean, sd, reference_mean, reference_sd, diff, noise, verdict, where
    diff = mean - reference_mean and verdict is ddcore.verdicts' word for it.
    """
    s = summarize(results, (metric,), by=("method", by))
    ref = s[s.method == reference].set_index(by)
    if ref.empty:
        raise ValueError(f"results hold no {reference!r} rows to compare with")
    rows = []
    for _, r in s[s.method != reference].iterrows():
        if r[by] not in ref.index:
            continue
        base = ref.loc[r[by]]
        c = compare(base[f"{metric}_mean"], base[f"{metric}_std"], r[f"{metric}_mean"], r[f"{metric}_std"])
        rows.append(
            {
                "method": r.method,
                by: r[by],
                "mean": r[f"{metric}_mean"],
                "sd": r[f"{metric}_std"],
                "reference_mean": base[f"{metric}_mean"],
                "reference_sd": base[f"{metric}_std"],
                "diff": c.diff,
                "noise": c.noise,
                "verdict": c.word,
            }
        )
    return pd.DataFrame(rows)


def drift_table(sets: dict, dataset: Dataset, names: tuple[str, ...] = ("method", "ipc")) -> pd.DataFrame:
    """How far each set's images moved from their initialisation (experiment.image_drift).

    sets: {key: SyntheticSet}, keys tuples named by `names` (or single values); sets without a
    snapshot at 0 (coresets, or distilled without snapshots) are left out. Columns: the names,
    drift_mean and drift_max (RMS pixel change on the 0-1 scale).
    """
    rows = []
    for key, syn in sets.items():
        if 0 not in syn.meta.get("snapshots", []):
            continue
        drift = image_drift(syn, dataset)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(names, key)), "drift_mean": float(drift.mean()), "drift_max": float(drift.max())})
    return pd.DataFrame(rows, columns=[*names, "drift_mean", "drift_max"])


def still_falling(losses) -> float:
    """Relative drop of the mean loss from the third quarter of a run to the last one.

    0.10 means the last quarter's mean is 10% below the third's: the run had not flattened yet.
    NaN for fewer than 8 values (too short to tell).
    """
    values = pd.Series(list(losses), dtype=float)
    if len(values) < 8:
        return math.nan
    quarter = len(values) // 4
    before, last = values.iloc[-2 * quarter : -quarter].mean(), values.iloc[-quarter:].mean()
    return float(1 - last / before) if before > 0 else math.nan


def at_floor(mean: float, floor: float, margin: float = FLOOR_MARGIN) -> bool:
    """Whether a metric's mean (%) sits within `margin` points of its floor."""
    return bool(mean <= floor + margin)


# --- notebook 01 ---
def baselines_conclusion(
    results: pd.DataFrame,
    sets: dict,
    dataset: Dataset,
    learned: tuple[str, ...] = ("dm", "dc"),
    coresets: tuple[str, ...] = ("random", "herding", "kmeans_coreset"),
) -> str:
    """Notebook 01: each method against random, the learned methods against the best real coreset
    (the papers' claim), whether the learned sets left their initialisation, and where the run
    cannot separate the methods. sets: {(method, ipc): SyntheticSet}."""
    lines = []
    versus = compare_to(results, "random") if "random" in set(results.method) else pd.DataFrame()
    ipcs = sorted(int(i) for i in results.ipc.unique())
    for ipc in ipcs:
        if versus.empty:
            break
        rows = versus[versus.ipc == ipc].sort_values("mean", ascending=False)
        ref = rows.reference_mean.iloc[0]
        parts = [f"{r.method} {_text(r['diff'], r.noise, r.verdict)}" for _, r in rows.iterrows()]
        lines.append(f"ipc {ipc}, against random ({ref:.1f}%): " + "; ".join(parts))
        if (rows.verdict == "within noise").all():
            lines.append(f"  ipc {ipc}: no method differs from random beyond noise; this run cannot rank them there.")
    lines += _claim_lines(results, ipcs, learned, coresets)
    lines += _drift_lines(drift_table(sets, dataset), results)
    return "\n".join(lines + students_line(results, ("method", "ipc")))


def _claim_lines(results, ipcs, learned, coresets) -> list[str]:
    """The papers' claim: learned images beat the best real coreset, most of all at the smallest ipc."""
    s = summarize(results, ("accuracy",), by=("method", "ipc")).set_index(["method", "ipc"])
    present = set(results.method)
    learned = [m for m in learned if m in present]
    coresets = [m for m in coresets if m in present]
    if not learned or not coresets:
        return []
    lines, gains = [], {}
    for ipc in ipcs:
        best = max(coresets, key=lambda m: s.loc[(m, ipc), "accuracy_mean"])
        b = s.loc[(best, ipc)]
        for m in learned:
            r = s.loc[(m, ipc)]
            c = compare(b.accuracy_mean, b.accuracy_std, r.accuracy_mean, r.accuracy_std)
            gains[(m, ipc)] = c
            lines.append(f"{m} vs the best real coreset at ipc {ipc} ({best}, {b.accuracy_mean:.1f}%): {c}")
    lo, hi = ipcs[0], ipcs[-1]
    for m in learned:
        first, last = gains[(m, lo)], gains[(m, hi)]
        holds = first.word == "better" and (lo == hi or first.diff > last.diff)
        lines.append(
            f"Claim (learned images beat real coresets, most of all at ipc {lo}) for {m}: "
            + ("holds" if holds else "not shown")
            + f" (ipc {lo}: {first.word}, {first.diff:+.1f}; ipc {hi}: {last.word}, {last.diff:+.1f})."
        )
    return lines


def _drift_lines(drift: pd.DataFrame, results: pd.DataFrame) -> list[str]:
    lines = []
    for _, d in drift.iterrows():
        if d.drift_mean < MOVED:
            lines.append(
                f"{d.method} at ipc {d.ipc} moved its images by {d.drift_mean:.3f} on average (RMS, 0-1 pixels) "
                f"from their real initialisation: it has barely left it (below {MOVED}), so its accuracy is "
                "that of its initial real images, a random subset; its result sits at that floor."
            )
        else:
            lines.append(
                f"{d.method} at ipc {d.ipc} moved its images by {d.drift_mean:.3f} on average (RMS, 0-1 pixels)."
            )
    return lines


# --- notebook 02 ---
def toy_conclusion(data, runs: dict, near: float) -> str:
    """Notebook 02's toy: per objective, how many classes end with a synthetic point within `near`
    of their rare mode, and the nearest distances."""
    lines = []
    for name, run in runs.items():
        nearest = distance_to_rare(run, data).min(1).values
        reached = int((nearest <= near).sum())
        dists = ", ".join(f"{d:.2f}" for d in nearest.tolist())
        lines.append(f"{name}: {reached} of {len(nearest)} classes reach their rare mode (nearest point: {dists})")
    return f"A class 'reaches' its rare mode when a synthetic point ends within {near:g} of its centre.\n" + "\n".join(
        lines
    )


def robust_caveats(results: pd.DataFrame, sets: dict, dataset: Dataset, num_classes: int) -> str:
    """Notebook 02: what the verdicts above cannot say. Metrics at their floor (rare subgroup at
    chance, worst cluster at 0), sets that barely left their real initialisation, DM losses still
    falling, and how many students and distillation seeds each verdict rests on.
    sets: {(benchmark, variant, ipc): SyntheticSet}."""
    lines = _headroom_lines(results, 100 / num_classes)
    floors = {
        "rare_group_accuracy": ("rare subgroup", 100 / num_classes),
        "cluster_min_accuracy": ("worst cluster", 0.0),
    }
    metrics = tuple(m for m in floors if m in results.columns)
    s = summarize(results, metrics, by=("benchmark", "method", "ipc")) if metrics else pd.DataFrame()
    for metric in metrics:
        name, floor = floors[metric]
        low = s[s[f"{metric}_mean"].notna() & (s[f"{metric}_mean"] <= floor + FLOOR_MARGIN)]
        if low.empty:
            lines.append(f"No set has its {name} accuracy at its floor ({floor:.0f}% + {FLOOR_MARGIN:g} points).")
        for (bench, ipc), g in low.groupby(["benchmark", "ipc"], sort=False):
            cells = ", ".join(f"{r.method} {r[f'{metric}_mean']:.1f}" for _, r in g.iterrows())
            lines.append(
                f"{bench}, ipc {ipc}: {name} accuracy at its floor ({floor:.0f}%): {cells}; "
                "no verdict on it there can mean anything."
            )
    drift = drift_table(sets, dataset, names=("benchmark", "method", "ipc"))
    for _, d in drift[drift.drift_mean < MOVED].iterrows():
        lines.append(
            f"{d.benchmark} {d.method} at ipc {d.ipc}: its images moved {d.drift_mean:.3f} (RMS, 0-1 pixels) from "
            "their real initialisation, below "
            f"{MOVED}: it is still nearly its initial real subset, so its comparison says little about the method."
        )
    for key, syn in sets.items():
        drop = still_falling(loss for _, loss in syn.meta.get("loss_curve", []))
        if not math.isnan(drop) and drop > FALLING:
            lines.append(
                f"{' '.join(map(str, key))}: the loss was still falling at the end (last quarter {drop:.0%} below "
                "the one before): more iterations would change this set."
            )
    nets = int(results.groupby(["benchmark", "method", "ipc"]).size().min())
    lines.append(
        f"Each verdict rests on {nets} students of one distilled set per method (one distillation seed): the "
        "noise covers the students, not the distillation, so a difference just beyond it is a hint, not a finding."
    )
    return "\n".join(lines + students_line(results, ("benchmark", "method", "ipc")))


def _headroom_lines(results: pd.DataFrame, chance: float) -> list[str]:
    """Where a random real subset sits on the rare subgroup: room to rise (up to the common subgroup)
    and to fall (down to chance) is what lets a verdict on the rare subgroup go either way."""
    groups = ("common_group_accuracy", "rare_group_accuracy")
    if not set(groups) <= set(results.columns):
        return []
    random = results[results.method == "random"].dropna(subset=list(groups))
    lines = []
    for _, r in summarize(random, groups, by=("benchmark", "ipc")).iterrows():
        rare, common = r.rare_group_accuracy_mean, r.common_group_accuracy_mean
        room = chance + FLOOR_MARGIN < rare < common - FLOOR_MARGIN
        lines.append(
            f"{r.benchmark}, ipc {r.ipc}: a random real subset scores {rare:.1f}% on the rare subgroup and "
            f"{common:.1f}% on the common one (chance {chance:.0f}%): "
            + (
                "room to rise and to fall, so a verdict on the rare subgroup can go either way."
                if room
                else "no headroom."
            )
        )
    return lines


# --- notebook 03 ---
def d3_conclusion(
    results: pd.DataFrame, labeller_accuracy: float, good_labeller: float = 95.0, num_classes: int = 10
) -> str:
    """Notebook 03: D3 against random+soft (the representation's gain) and against the best image
    method at each budget, whether D3 rises with its budget, how much of it D3 uses, and the labeller.
    labeller_accuracy in %. A D3 set within 5 points of chance (100 / num_classes) gets a sentence
    saying it sits at that floor (with its label mismatch, when the rows carry it): a set that has
    not left its initialisation says nothing about the method."""
    lines = []
    budgets = sorted(int(b) for b in results.budget.unique())
    d3 = results[results.method == "d3"]
    versus = compare_to(results, "random+soft", by="budget")
    images = [m for m in dict.fromkeys(results.method) if m not in ("d3", "random+soft") and not m.startswith("d3")]
    s = summarize(results, ("accuracy",), by=("method", "budget")).set_index(["method", "budget"])
    for b in budgets:
        v = versus[(versus.method == "d3") & (versus.budget == b)]
        if v.empty:
            lines.append(f"budget {b}: no D3 set (no decoder fits this budget).")
            continue
        v = v.iloc[0]
        used = d3[d3.budget == b].ipc_equivalent.iloc[0]
        gain = _text(v["diff"], v.noise, v.verdict)
        line = f"budget {b}: D3 {v['mean']:.1f}% vs random+soft {v.reference_mean:.1f}%: {gain}"
        if images:
            best = max(images, key=lambda m: s.loc[(m, b), "accuracy_mean"])
            c = compare(s.loc[(best, b), "accuracy_mean"], s.loc[(best, b), "accuracy_std"], v["mean"], v.sd)
            line += f"; vs the best image method ({best}): {c}"
        lines.append(line + f"; D3 keeps {used:.2f} of its {b} IPC-equivalents.")
        if v["mean"] <= 100 / num_classes + 5:
            cell = d3[d3.budget == b]
            mismatch = cell.label_mismatch.iloc[0] if "label_mismatch" in cell else None
            lines.append(
                f"  budget {b}: D3 sits at chance ({100 / num_classes:.0f}%), the floor: its decoder has not left"
                " its initialisation at these iterations"
                + (
                    f" (the labeller gives {100 * mismatch:.0f}% of the priors' mean images another class than"
                    " their own)"
                    if mismatch is not None and pd.notna(mismatch)
                    else ""
                )
                + "; this says nothing about D3 at the authors' iterations (see the README's D3 learning curve)."
            )
    lines += _monotone_lines(s, [b for b in budgets if ("d3", b) in s.index])
    words = (
        "soft labels carry its mistakes"
        if labeller_accuracy < good_labeller
        else f"at least {good_labeller:g}%, soft labels are not the weak link"
    )
    lines.append(f"The labeller reaches {labeller_accuracy:.1f}% on the test set: {words}.")
    soft = compare_to(results[results.method.isin(["random", "random+soft"])], "random", by="budget")
    for _, r in soft.iterrows():
        lines.append(
            f"  soft labels alone (random+soft vs random), budget {r.budget}: {_text(r['diff'], r.noise, r.verdict)}"
        )
    return "\n".join(lines + students_line(results, ("method", "budget")))


def _monotone_lines(s: pd.DataFrame, budgets: list[int]) -> list[str]:
    lines, drops = [], []
    for a, b in zip(budgets, budgets[1:]):
        lo, hi = s.loc[("d3", a)], s.loc[("d3", b)]
        c = compare(lo.accuracy_mean, lo.accuracy_std, hi.accuracy_mean, hi.accuracy_std)
        lines.append(f"D3 from budget {a} to {b}: {c}")
        drops += [b] if c.word == "worse" else []
    if len(budgets) > 1:
        lines.append(
            "D3 is not monotone in its budget here: more storage gave a worse set at budget "
            + ", ".join(map(str, drops))
            + "."
            if drops
            else "D3 does not get worse with a larger budget here."
        )
    return lines


def sweep_conclusion(sweep: pd.DataFrame, base: dict[str, int], num_classes: int = 10) -> str:
    """Notebook 03's sweep: each value of each swept setting against the setting's base value
    (base: e.g. {'lpc': 2, 'latent_dim': 16}, the run both sweeps share), with storage. When every
    variant is within 5 points of chance, a last line says the sweep sits at that floor."""
    lines = []
    for name, rows in sweep.groupby("swept", sort=False):
        s = summarize(rows, ("accuracy",), by=("value",)).set_index("value")
        storage = rows.groupby("value").ipc_equivalent.first()
        ref = base.get(name, s.index[0])
        if ref not in s.index:
            ref = s.index[0]
        for value in s.index:
            if value == ref:
                continue
            c = compare(
                s.loc[ref, "accuracy_mean"],
                s.loc[ref, "accuracy_std"],
                s.loc[value, "accuracy_mean"],
                s.loc[value, "accuracy_std"],
            )
            lines.append(
                f"{name} {value} vs {ref}: {c}; storage {storage[value]:.2f} vs {storage[ref]:.2f} IPC-equivalents"
            )
    means = sweep.groupby(["swept", "value"]).accuracy.mean() * 100
    if len(means) and means.max() <= 100 / num_classes + 5:
        lines.append(
            f"Every variant sits at chance ({100 / num_classes:.0f}%): at these iterations the sweep cannot tell"
            " the settings apart."
        )
    return "\n".join(lines)
