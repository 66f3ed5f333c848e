"""Subtask decomposition, measured: what notebook 04 calls.

One torchrun launch per (S subtasks, N workers), each in `<root>/S<S>_N<N>`; then the costs of
each run (wall time, peak memory of a worker, storage of the aggregated set), the accuracy of
the aggregated set and the accuracy on each subtask's classes, and the speed-up of N workers
over one. Numbers in, tables and sentences out: nothing here trains or launches except
`subtask_runs` (torchrun) and `evaluate_runs` (students).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from ..checks import check_int
from ..data import Dataset
from ..evaluate import EvalConfig, evaluate_synthetic
from ..federated import AGGREGATED, launch_torchrun, subtask_ids
from ..storage import storage
from ..synthetic import SyntheticSet
from ..verdicts import compare

STORAGE_PARTS = ("images", "priors", "decoder", "labels")


def run_dir(root: str | os.PathLike, subtasks: int, nproc: int) -> Path:
    """The folder of the run with `subtasks` subtasks on `nproc` workers."""
    return Path(root) / f"S{subtasks}_N{nproc}"


def run_plan(subtasks: list[int], nproc: int, speedup_subtasks: int | None) -> list[tuple[int, int]]:
    """(S, N) of every run: each S on `nproc` workers, then `speedup_subtasks` on one worker
    (its run on `nproc` workers is the other half of the speed-up; added if not in `subtasks`).
    speedup_subtasks None or 0: no speed-up runs."""
    if not isinstance(subtasks, (list, tuple)) or not subtasks:
        raise ValueError(f"subtasks must be a non-empty list of subtask counts, got {subtasks!r}")
    for s in subtasks:
        check_int("number of subtasks", s, low=1)
    check_int("nproc", nproc, low=1)
    plan = [(s, nproc) for s in dict.fromkeys(subtasks)]  # in order, without repeats
    if speedup_subtasks is not None:
        check_int("speedup_subtasks", speedup_subtasks, low=0)
    if speedup_subtasks and nproc > 1:
        plan += [(speedup_subtasks, n) for n in (nproc, 1) if (speedup_subtasks, n) not in plan]
    return plan


def subtask_runs(
    options: dict,
    subtasks: list[int],
    nproc: int,
    root: str | os.PathLike,
    speedup_subtasks: int | None = None,
    threads: int = 1,
    fresh: bool = True,
    timeout_s: float | None = None,
) -> dict[tuple[int, int], dict]:
    """launch_torchrun for every run of run_plan; {(S, N): its federated.json record}.

    `options` are the command-line options of every run except `subtasks` (see
    ddcore.federated.torchrun_command). fresh=True deletes each run's earlier files first, so
    its times measure the whole work; fresh=False reuses finished subtasks.
    """
    if "subtasks" in options:
        raise ValueError("options must not set 'subtasks'; give the counts as `subtasks`")
    return {
        (s, n): launch_torchrun(
            {**options, "subtasks": s}, n, run_dir(root, s, n), threads=threads, fresh=fresh, timeout_s=timeout_s
        )
        for s, n in run_plan(subtasks, nproc, speedup_subtasks)
    }


def load_sets(root: str | os.PathLike, records: dict) -> dict[tuple[int, int], SyntheticSet]:
    """The aggregated set of every run, {(S, N): set}."""
    return {key: SyntheticSet.load(run_dir(root, *key) / AGGREGATED) for key in records}


def evaluate_runs(
    sets: dict, dataset: Dataset, cfg: EvalConfig, seed: int = 0, device=None, progress: bool = False
) -> pd.DataFrame:
    """Students on the aggregated set of each S (one run per S: the set does not depend on the
    number of workers); one row per student with `subtasks` and `group_<i>`, the accuracy on
    the test images of subtask i's classes."""
    frames = []
    for s in sorted({s for s, _ in sets}):
        syn = sets[min(key for key in sets if key[0] == s)]
        groups = subtask_ids(dataset.labels_test, syn.meta["groups"])
        rows = evaluate_synthetic(syn, dataset, cfg, seed=seed, device=device, test_groups=groups, progress=progress)
        frames.append(rows.assign(subtasks=s))
    return pd.concat(frames, ignore_index=True)


def same_sets(sets: dict) -> dict[int, bool]:
    """For each S run on several worker counts: whether every run gave the same images and labels."""
    out = {}
    for s in sorted({s for s, _ in sets}):
        runs = [sets[key] for key in sorted(sets) if key[0] == s]
        if len(runs) > 1:
            out[s] = all(r.images.equal(runs[0].images) and r.labels.equal(runs[0].labels) for r in runs[1:])
    return out


# --- Tables ---
def cost_table(records: dict, sets: dict) -> pd.DataFrame:
    """One row per run: times, peak memory of its workers, storage of its aggregated set.

    wall_s: the torchrun command end to end, seen by the caller (start-up included); run_s:
    run_federated on rank 0 (data, subtasks, waiting for the others, aggregation); startup_s:
    the difference; work_s: the sum of the subtasks' seconds (the work a single worker would do);
    peak_rss_mib: the busiest worker's peak resident memory, least_rss_mib: the least busy one's;
    load_average: the machine's 1-minute load average as the run ended (above the number of cores,
    other work was competing with the workers).
    ipc_<part>: storage of each part in IPC-equivalents (they add up to ipc_equivalent).
    """
    rows = []
    for (s, n), rec in sorted(records.items()):
        syn = sets[(s, n)]
        cost = storage(syn)
        per_ipc = cost["ipc_equivalent"] / cost["values"] if cost["values"] else 0.0
        rows.append(
            {
                "subtasks": s,
                "workers": n,
                "wall_s": rec.get("launch_seconds", math.nan),
                "run_s": rec["wall_seconds"],
                "startup_s": rec.get("launch_seconds", math.nan) - rec["wall_seconds"],
                "work_s": sum(t["seconds"] for t in rec["subtasks"]),
                "slowest_subtask_s": max(t["seconds"] for t in rec["subtasks"]),
                "peak_rss_mib": max(w["peak_rss_mib"] for w in rec["workers"]),
                "least_rss_mib": min(w["peak_rss_mib"] for w in rec["workers"]),
                "reused": any(t["loaded"] for t in rec["subtasks"]),
                "load_average": rec.get("load_average", math.nan),
                "bytes": cost["bytes"],
                "ipc_equivalent": cost["ipc_equivalent"],
                **{f"ipc_{p}": cost[f"{p}_values"] * per_ipc for p in STORAGE_PARTS},
            }
        )
    return pd.DataFrame(rows)


def accuracy_table(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of the aggregated set per S, mean and sd over students, in percent."""
    grouped = results.groupby("subtasks")["accuracy"]
    out = pd.DataFrame(
        {"accuracy_mean": grouped.mean() * 100, "accuracy_std": grouped.std(ddof=0) * 100, "nets": grouped.size()}
    ).reset_index()
    out["accuracy (%)"] = out.accuracy_mean.map("{:.1f}".format) + " +- " + out.accuracy_std.map("{:.1f}".format)
    return out


def equal_storage_baseline(
    table: pd.DataFrame, dataset: Dataset, eval_cfg: EvalConfig, seed: int = 0, device=None
) -> pd.DataFrame:
    """A random real subset (hard labels) with as many images per class as each S's set stores in
    IPC-equivalents (rounded down, at least 1), evaluated like the aggregated sets: what the same
    bytes buy without any distillation. One row per S: subtasks, ipc, accuracy (%) mean and sd."""
    from ..distill import distill

    rows = []
    main = table[table.workers == table.workers.max()].sort_values("subtasks")
    for s, ipc_eq in zip(main.subtasks, main.ipc_equivalent):
        ipc = max(1, math.floor(ipc_eq))
        syn = distill("random", dataset, ipc, seed=seed, progress=False)
        acc = evaluate_synthetic(syn, dataset, eval_cfg, seed=seed, device=device, progress=False).accuracy * 100
        rows.append({"subtasks": int(s), "random_ipc": ipc, "random_mean": acc.mean(), "random_std": acc.std(ddof=0)})
    return pd.DataFrame(rows)


def subtask_accuracy(results: pd.DataFrame, sets: dict) -> pd.DataFrame:
    """One row per (S, subtask): its classes and the accuracy on their test images (percent,
    mean and sd over students)."""
    rows = []
    for s, frame in results.groupby("subtasks"):
        groups = sets[min(key for key in sets if key[0] == s)].meta["groups"]
        for i, classes in enumerate(groups):
            acc = frame[f"group_{i}"] * 100
            rows.append(
                {
                    "subtasks": s,
                    "subtask": i,
                    "classes": _class_range(classes),
                    "accuracy_mean": acc.mean(),
                    "accuracy_std": acc.std(ddof=0),
                }
            )
    return pd.DataFrame(rows)


def _class_range(classes: list[int]) -> str:
    """'0-4' for consecutive ids, '1,4,7' otherwise."""
    if len(classes) > 1 and classes == list(range(classes[0], classes[-1] + 1)):
        return f"{classes[0]}-{classes[-1]}"
    return ",".join(str(c) for c in classes)


def speedup(table: pd.DataFrame, subtasks: int, nproc: int, cores: int | None = None) -> dict | None:
    """Seconds with 1 and with `nproc` workers at `subtasks` subtasks, their ratios, and the
    best ratio possible: min(nproc, subtasks, cores), one thread per worker. None when nothing
    was compared (nproc 1, or subtasks None or 0 as in run_plan)."""
    check_int("nproc", nproc, low=1)
    if nproc == 1 or not subtasks:
        return None
    cores = cores or os.cpu_count() or 1
    rows = table.set_index(["subtasks", "workers"])
    for n in (1, nproc):
        if (subtasks, n) not in rows.index:
            raise ValueError(f"no run with {subtasks} subtasks on {n} worker(s) in the table")
    one, many = rows.loc[(subtasks, 1)], rows.loc[(subtasks, nproc)]
    return {
        "subtasks": subtasks,
        "workers": nproc,
        "cores": cores,
        "wall_s_1": float(one.wall_s),
        "wall_s_n": float(many.wall_s),
        "speedup": float(one.wall_s / many.wall_s),
        "run_s_1": float(one.run_s),
        "run_s_n": float(many.run_s),
        "run_speedup": float(one.run_s / many.run_s),
        "ideal": min(nproc, subtasks, cores),
        "reused": bool(one.reused or many.reused),
    }


# --- Conclusions, computed from the tables ---
def conclusion_text(
    table: pd.DataFrame,
    accuracy: pd.DataFrame,
    speed: dict | None,
    num_classes: int | None = None,
    baseline: pd.DataFrame | None = None,
) -> str:
    """What the numbers say, sentence by sentence; nothing in it is decided in advance.

    baseline: `equal_storage_baseline`'s table; each S is then compared with random real images at its
    storage. num_classes: when given, every S whose accuracy is within 5 points of chance is named as sitting
    at that floor, and an accuracy difference between S values is not read as an effect of S."""
    main = table[table.workers == table.workers.max()].sort_values("subtasks")
    lines = [_time_line(main), _memory_line(main), _storage_line(main), _accuracy_line(accuracy)]
    if baseline is not None:
        lines.append(_baseline_line(accuracy, baseline))
    if num_classes is not None:
        chance = 100 / num_classes
        floor = accuracy[accuracy.accuracy_mean <= chance + 5].sort_values("subtasks")
        if len(floor):
            lines.append(
                f"At chance ({chance:.0f}%), the floor: S={', S='.join(str(s) for s in floor.subtasks)}. Such a set"
                " has not left its initialisation at these iterations; its accuracy says nothing about splitting"
                " the classes, and a difference between S values there is noise."
            )
    if speed is not None:
        lines.append(_speedup_line(speed))
    if table.reused.any():
        lines.append(
            "Some runs reused subtasks of an earlier run (fresh=False): their times measure loading, not distillation."
        )
    return "\n".join(lines)


def _series(frame: pd.DataFrame, column: str, fmt: str) -> str:
    return ", ".join(f"S={s}: {fmt.format(v)}" for s, v in zip(frame.subtasks, frame[column]))


def _time_line(main: pd.DataFrame) -> str:
    n = int(main.workers.iloc[0])
    return (
        f"Wall time on {n} worker(s), end to end: {_series(main, 'wall_s', '{:.1f} s')}; of which start-up "
        f"(processes, imports): {_series(main, 'startup_s', '{:.1f} s')}. The machine's load average as each "
        f"run ended: {_series(main, 'load_average', '{:.1f}')}."
    )


def _memory_line(main: pd.DataFrame) -> str:
    change = main.peak_rss_mib.iloc[-1] - main.peak_rss_mib.iloc[0]
    return (
        f"Peak memory of the busiest worker: {_series(main, 'peak_rss_mib', '{:.0f} MiB')} "
        f"({change:+.0f} MiB from S={main.subtasks.iloc[0]} to S={main.subtasks.iloc[-1]}); "
        f"the least busy worker peaked at {main.least_rss_mib.min():.0f} MiB."
    )


def _storage_line(main: pd.DataFrame) -> str:
    ipc = main.ipc_equivalent.tolist()
    trend = (
        "grows with S"
        if all(b > a for a, b in zip(ipc, ipc[1:]))
        else "shrinks with S"
        if all(b < a for a, b in zip(ipc, ipc[1:]))
        else "does not change monotonically with S"
    )
    return (
        f"Storage {trend}: {_series(main, 'ipc_equivalent', '{:.2f}')} IPC-equivalents "
        f"({_series(main, 'bytes', '{:,} bytes')}); the decoders' share: {_series(main, 'ipc_decoder', '{:.2f}')}."
    )


def _accuracy_line(acc: pd.DataFrame) -> str:
    acc = acc.sort_values("subtasks")
    first, last = acc.iloc[0], acc.iloc[-1]
    c = compare(first.accuracy_mean, first.accuracy_std, last.accuracy_mean, last.accuracy_std)
    diff, noise = c.diff, c.noise
    verdict = "within" if c.word == "within noise" else "larger than"  # ddcore.verdicts' rule
    each = ", ".join(f"S={s}: {a}" for s, a in zip(acc.subtasks, acc["accuracy (%)"]))
    return (
        f"Accuracy of the aggregated set: {each}; S={last.subtasks} minus S={first.subtasks}: {diff:+.1f} "
        f"points, {verdict} the students' spread ({noise:.1f})."
    )


def _baseline_line(acc: pd.DataFrame, baseline: pd.DataFrame) -> str:
    parts = []
    for b in baseline.itertuples():
        a = acc[acc.subtasks == b.subtasks].iloc[0]
        c = compare(b.random_mean, b.random_std, a.accuracy_mean, a.accuracy_std)
        parts.append(f"S={b.subtasks} vs random real at ipc {b.random_ipc} (the same storage): {c}")
    return "At equal storage: " + "; ".join(parts) + "."


def _speedup_line(speed: dict) -> str:
    share = speed["run_speedup"] / speed["ideal"]
    line = (
        f"Speed-up of {speed['workers']} workers over 1 at S={speed['subtasks']}: {speed['speedup']:.2f}x "
        f"end to end ({speed['wall_s_1']:.1f} s -> {speed['wall_s_n']:.1f} s), {speed['run_speedup']:.2f}x "
        f"inside the run ({speed['run_s_1']:.1f} s -> {speed['run_s_n']:.1f} s); at best {speed['ideal']}x "
        f"with {speed['cores']} cores, one thread per worker ({share:.0%} of it inside the run)."
    )
    if max(speed["speedup"], speed["run_speedup"]) > 1.05 * speed["ideal"]:
        line += (
            " That is more than the cores allow: the two runs met different loads on a shared machine, so "
            "this ratio measures the load more than the code."
        )
    return line
