"""Notebook 04's helpers: the run plan, tables, speed-up, conclusions and figures, on made-up records."""

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")

import ddcore.studies.federated_experiment as fx  # noqa: E402
from ddcore.data import load_dataset  # noqa: E402
from ddcore.evaluate import EvalConfig  # noqa: E402
from ddcore.federated import aggregate, split_classes  # noqa: E402
from ddcore.models import ModelConfig  # noqa: E402
from ddcore.studies.federated_plots import accuracy_storage_plot, cost_plot, subtask_accuracy_plot  # noqa: E402
from ddcore.synthetic import SyntheticSet  # noqa: E402
from ddcore.train import TrainConfig  # noqa: E402


def _aggregated(num_subtasks: int, ipc: int = 1, num_classes: int = 10, size: int = 16):
    """An aggregated set of hard-labelled images, ipc per class, over `num_subtasks` groups."""
    groups = split_classes(num_classes, num_subtasks)
    parts = []
    for g in groups:
        labels = torch.arange(len(g)).repeat_interleave(ipc)
        parts.append(SyntheticSet(torch.randn(len(labels), 1, size, size), labels, {"method": "x", "ipc": ipc}))
    return aggregate(parts, groups, num_classes)


def _record(num_subtasks: int, workers: int, seconds: float, rss: float, loaded: bool = False) -> dict:
    subtasks = [{"index": i, "seconds": seconds, "loaded": loaded, "rank": i % workers} for i in range(num_subtasks)]
    return {
        "wall_seconds": seconds * num_subtasks / workers,
        "launch_seconds": seconds * num_subtasks / workers + 5,
        "subtasks": subtasks,
        "workers": [{"rank": r, "peak_rss_mib": rss + 10 * r} for r in range(workers)],
    }


@pytest.fixture
def runs():
    records = {
        (1, 2): _record(1, 2, 20.0, 900),
        (2, 2): _record(2, 2, 10.0, 800),
        (5, 2): _record(5, 2, 4.0, 700),
        (2, 1): _record(2, 1, 10.0, 800),
    }
    ipc = {1: 1, 2: 2, 5: 3}  # growing storage
    sets = {key: _aggregated(key[0], ipc[key[0]]) for key in records}
    return records, sets


def test_run_plan_adds_the_one_worker_run_once():
    assert fx.run_plan([1, 2, 5], 2, 2) == [(1, 2), (2, 2), (5, 2), (2, 1)]
    assert fx.run_plan([1, 5], 2, 2) == [(1, 2), (5, 2), (2, 2), (2, 1)]
    assert fx.run_plan([1, 2, 2], 1, 2) == [(1, 1), (2, 1)]  # one worker: nothing to compare
    assert fx.run_plan([1, 2], 4, 0) == [(1, 4), (2, 4)]
    with pytest.raises(ValueError, match="non-empty list"):
        fx.run_plan([], 2, 2)
    with pytest.raises(ValueError, match="number of subtasks=0 is too small"):
        fx.run_plan([0], 2, 2)


def test_subtask_runs_launch_each_run_in_its_own_folder(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        fx,
        "launch_torchrun",
        lambda options, nproc, out_dir, **kw: (
            calls.append((options["subtasks"], nproc, out_dir.name, kw["threads"], kw["fresh"])) or {"ok": True}
        ),
    )
    records = fx.subtask_runs({"method": "d3"}, [1, 2], 2, tmp_path, speedup_subtasks=2)
    assert list(records) == [(1, 2), (2, 2), (2, 1)]
    assert calls == [(1, 2, "S1_N2", 1, True), (2, 2, "S2_N2", 1, True), (2, 1, "S2_N1", 1, True)]
    with pytest.raises(ValueError, match="must not set 'subtasks'"):
        fx.subtask_runs({"subtasks": 3}, [1], 2, tmp_path)


def test_cost_table_times_memory_and_storage(runs):
    table = fx.cost_table(*runs).set_index(["subtasks", "workers"])
    row = table.loc[(5, 2)]
    assert row.run_s == 10.0 and row.wall_s == 15.0 and row.startup_s == 5.0
    assert row.work_s == 20.0 and row.slowest_subtask_s == 4.0
    assert row.peak_rss_mib == 710 and row.least_rss_mib == 700 and not row.reused
    parts = table[[f"ipc_{p}" for p in fx.STORAGE_PARTS]].sum(axis=1)
    pd.testing.assert_series_equal(parts, table.ipc_equivalent, check_names=False)
    assert table.loc[(1, 2)].ipc_images == pytest.approx(1.0) and table.loc[(5, 2)].ipc_images == pytest.approx(3.0)


def test_speedup_compares_one_worker_with_many(runs):
    table = fx.cost_table(*runs)
    speed = fx.speedup(table, 2, 2, cores=2)
    assert speed["run_s_1"] == 20.0 and speed["run_s_n"] == 10.0 and speed["run_speedup"] == 2.0
    assert speed["speedup"] == pytest.approx(25 / 15) and speed["ideal"] == 2
    assert fx.speedup(table, 2, 2, cores=8)["ideal"] == 2 and fx.speedup(table, 2, 1) is None
    assert fx.speedup(table, 0, 2) is None
    with pytest.raises(ValueError, match="no run with 5 subtasks on 1 worker"):
        fx.speedup(table, 5, 2)


def _results(accuracy_by_s: dict[int, list[float]]) -> pd.DataFrame:
    rows = []
    for s, accs in accuracy_by_s.items():
        for k, acc in enumerate(accs):
            groups = {f"group_{i}": acc + 0.01 * i for i in range(s)}
            rows.append({"subtasks": s, "net": k, "accuracy": acc, **groups})
    return pd.DataFrame(rows)


def test_accuracy_tables_per_s_and_per_subtask(runs):
    results = _results({1: [0.5, 0.7], 2: [0.8, 0.8], 5: [0.9, 0.9]})
    acc = fx.accuracy_table(results)
    assert acc.accuracy_mean.round(6).tolist() == [60.0, 80.0, 90.0] and acc.accuracy_std.iloc[0] == pytest.approx(10)
    assert acc["accuracy (%)"].tolist() == ["60.0 +- 10.0", "80.0 +- 0.0", "90.0 +- 0.0"]
    per = fx.subtask_accuracy(results, runs[1])
    assert per.groupby("subtasks").size().to_dict() == {1: 1, 2: 2, 5: 5}
    assert per.classes.tolist()[:3] == ["0-9", "0-4", "5-9"]
    assert per[per.subtasks == 5].accuracy_mean.round(6).tolist() == [90.0, 91.0, 92.0, 93.0, 94.0]
    assert fx._class_range([1, 4, 7]) == "1,4,7" and fx._class_range([3]) == "3"


def test_conclusions_are_computed_from_the_tables(runs):
    table = fx.cost_table(*runs)
    acc = fx.accuracy_table(_results({1: [0.5, 0.7], 2: [0.8, 0.8], 5: [0.9, 0.9]}))
    text = fx.conclusion_text(table, acc, fx.speedup(table, 2, 2, cores=2))
    assert "Storage grows with S" in text
    assert "S=5 minus S=1: +30.0 points, larger than the students' spread (10.0)" in text
    assert "Speed-up of 2 workers over 1 at S=2: 1.67x end to end" in text and "2.00x inside the run" in text
    assert "at best 2x with 2 cores" in text and "reused" not in text
    assert "more than the cores allow" not in text and "load average as each run ended: S=1: nan" in text
    assert "more than the cores allow" in fx.conclusion_text(table, acc, fx.speedup(table, 2, 2, cores=1))
    flat = fx.accuracy_table(_results({1: [0.5, 0.7], 5: [0.55, 0.65]}))
    assert "within the students' spread" in fx.conclusion_text(table, flat, None)
    assert "At chance" not in fx.conclusion_text(table, acc, None, num_classes=10)
    base = pd.DataFrame(
        {"subtasks": [1, 5], "random_ipc": [2, 14], "random_mean": [80.0, 95.0], "random_std": [1.0, 0]}
    )
    text = fx.conclusion_text(table, acc, None, baseline=base)
    assert "S=1 vs random real at ipc 2 (the same storage): -20.0" in text and "S=5 vs random real at ipc 14" in text
    chance = fx.accuracy_table(_results({1: [0.12, 0.12], 2: [0.09, 0.1], 5: [0.5, 0.6]}))
    assert "At chance (10%), the floor: S=1, S=2." in fx.conclusion_text(table, chance, None, num_classes=10)


def test_conclusions_flag_reused_runs(runs):
    records, sets = runs
    records = {**records, (1, 2): _record(1, 2, 20.0, 900, loaded=True)}
    acc = fx.accuracy_table(_results({1: [0.5], 2: [0.5], 5: [0.5]}))
    assert "reused subtasks of an earlier run" in fx.conclusion_text(fx.cost_table(records, sets), acc, None)


def test_evaluate_runs_gives_accuracy_per_subtask_and_same_sets():
    digits = load_dataset("digits")
    sets = {(2, 2): _aggregated(2), (5, 2): _aggregated(5)}
    sets[(2, 1)] = sets[(2, 2)]
    cfg = EvalConfig(model=ModelConfig(width=8), train=TrainConfig(epochs=2), num_nets=1)
    results = fx.evaluate_runs(sets, digits, cfg, device="cpu")
    assert results.subtasks.tolist() == [2, 5]
    assert results.loc[0, ["group_0", "group_1"]].notna().all() and pd.isna(results.loc[0, "group_2"])
    assert results.loc[1, [f"group_{i}" for i in range(5)]].between(0, 1).all()
    assert fx.same_sets(sets) == {2: True}
    assert fx.same_sets({**sets, (2, 1): _aggregated(2)}) == {2: False}


def test_equal_storage_baseline_uses_the_storage_of_each_s():
    digits = load_dataset("digits")
    table = pd.DataFrame({"subtasks": [1, 2], "workers": [2, 2], "ipc_equivalent": [0.4, 2.9]})
    cfg = EvalConfig(model=ModelConfig(width=8), train=TrainConfig(epochs=2), num_nets=2)
    base = fx.equal_storage_baseline(table, digits, cfg)
    assert base.random_ipc.tolist() == [1, 2]  # rounded down, at least one image per class
    assert base.random_mean.between(0, 100).all() and (base.random_std >= 0).all()


def test_figures_have_their_axes(runs):
    table = fx.cost_table(*runs)
    results = _results({1: [0.5, 0.7], 2: [0.8, 0.8], 5: [0.9, 0.9]})
    acc = fx.accuracy_table(results)
    fig = cost_plot(table, "cost")
    assert [ax.get_ylabel() for ax in fig.axes] == ["wall time (s)", "peak resident memory of a worker (MiB)"]
    assert len(fig.axes[0].get_legend().get_texts()) == 4  # two lines per worker count
    fig = accuracy_storage_plot(table, acc, "acc")
    assert fig.axes[1].get_ylabel() == "storage (IPC-equivalents)"
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["images", "labels"]
    fig = subtask_accuracy_plot(fx.subtask_accuracy(results, runs[1]), acc, "per subtask")
    assert [ax.get_title().split(";")[0] for ax in fig.axes] == ["S = 1", "S = 2", "S = 5"]
    assert "all test images: 90.0%" in fig.axes[2].get_title()
    assert len(fig.axes[2].patches) == 5
    plt.close("all")
