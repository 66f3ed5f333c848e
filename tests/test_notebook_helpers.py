"""The notebook-facing helpers behind notebooks 01-03's figures and conclusion cells (fast)."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ddcore.data import Dataset  # noqa: E402
from ddcore.studies import conclusions as cl  # noqa: E402
from ddcore.studies.d3_plots import accuracy_vs_storage, sweep_plot  # noqa: E402
from ddcore.studies.experiment import distill_cached, image_drift, loss_curve, run_grid  # noqa: E402
from ddcore.studies.plots import accuracy_vs_ipc, distillation_progress  # noqa: E402
from ddcore.studies.report import profile_changes  # noqa: E402
from ddcore.synthetic import SyntheticSet  # noqa: E402


def rows(spec: dict) -> pd.DataFrame:
    """{(method, ipc): [accuracies in 0-1]} -> one row per student, as the grids return."""
    return pd.DataFrame([{"method": m, "ipc": ipc, "accuracy": a} for (m, ipc), accs in spec.items() for a in accs])


def tiny_dataset() -> Dataset:
    images = torch.zeros(4, 1, 4, 4)
    labels = torch.tensor([0, 0, 1, 1])
    return Dataset("tiny", images, labels, images, labels, ["a", "b"], (0.5,), (0.25,))


def moved_set(step: float) -> SyntheticSet:
    """Two images that start at 0 and end `step` away (normalised units), with a snapshot at 0 and a curve."""
    start = torch.zeros(2, 1, 4, 4)
    meta = {"method": "dm", "ipc": 1, "snapshots": [0], "config": {"iterations": 8}}
    meta["loss_curve"] = [[i, 10.0 - i] for i in range(8)]
    return SyntheticSet(start + step, torch.tensor([0, 1]), meta, {"snapshot_0.images_syn": start})


def test_compare_to_uses_the_shared_noise_rule():
    results = rows({("random", 1): [0.50, 0.52], ("dm", 1): [0.80, 0.82], ("dc", 1): [0.505, 0.515]})
    table = cl.compare_to(results, "random").set_index("method")
    assert table.loc["dm", "diff"] == pytest.approx(30.0)
    assert table.loc["dm", "noise"] == pytest.approx(math.hypot(1.0, 1.0))
    assert table.loc["dm", "verdict"] == "better"
    assert table.loc["dc", "verdict"] == "within noise"
    with pytest.raises(ValueError, match="no 'herding' rows"):
        cl.compare_to(results, "herding")


def test_still_falling_and_at_floor():
    assert cl.still_falling([10, 9, 8, 7, 6, 5, 4, 3]) > cl.FALLING  # steadily falling
    assert abs(cl.still_falling([5.0] * 40)) < 1e-9  # flat
    assert math.isnan(cl.still_falling([3, 2, 1]))  # too short to tell
    assert cl.at_floor(11.5, 10.0) and not cl.at_floor(25.0, 10.0)


def test_image_drift_is_rms_on_the_unit_pixel_scale():
    data = tiny_dataset()
    drift = image_drift(moved_set(0.4), data)  # 0.4 normalised = 0.4 * std 0.25 = 0.1 in [0, 1] pixels
    assert drift.tolist() == pytest.approx([0.1, 0.1])
    table = cl.drift_table(
        {("dm", 1): moved_set(0.4), ("random", 1): SyntheticSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]))}, data
    )
    assert table.method.tolist() == ["dm"] and table.drift_mean.iloc[0] == pytest.approx(0.1)
    assert loss_curve(moved_set(0.0)).loss.iloc[-1] == 3.0
    with pytest.raises(KeyError, match="no loss curve"):
        loss_curve(SyntheticSet(torch.zeros(1, 1, 4, 4), torch.tensor([0])))


def test_baselines_conclusion_names_the_floor_and_the_claim():
    results = rows(
        {
            ("random", 1): [0.50, 0.52],
            ("herding", 1): [0.70, 0.70],
            ("dm", 1): [0.80, 0.82],
            ("dc", 1): [0.505, 0.515],
            ("random", 10): [0.90, 0.91],
            ("herding", 10): [0.90, 0.91],
            ("dm", 10): [0.905, 0.905],
            ("dc", 10): [0.90, 0.90],
        }
    )
    sets = {("dm", 1): moved_set(0.4), ("dc", 1): moved_set(0.02)}
    text = cl.baselines_conclusion(results, sets, tiny_dataset())
    assert "dm vs the best real coreset at ipc 1 (herding, 70.0%): +11.0" in text
    assert "for dm: holds" in text and "for dc: not shown" in text
    assert "ipc 10: no method differs from random beyond noise" in text
    assert "dc at ipc 1 moved its images by 0.005" in text and "barely left it" in text
    assert "dm at ipc 1 moved its images by 0.100" in text


def test_robust_caveats_flag_floors_unmoved_sets_and_falling_losses():
    spec = (("dm", 0.10), ("dm", 0.11), ("dm+robust", 0.30), ("dm+robust", 0.32), ("random", 0.30))
    results = pd.DataFrame(
        [{"benchmark": "rare", "method": m, "ipc": 1, "accuracy": 0.5, "rare_group_accuracy": r} for m, r in spec]
    ).assign(cluster_min_accuracy=0.3, common_group_accuracy=0.9)
    sets = {("rare", "dm", 1): moved_set(0.02)}
    text = cl.robust_caveats(results, sets, tiny_dataset(), num_classes=10)
    assert "random real subset scores 30.0% on the rare subgroup and 90.0%" in text and "room to rise" in text
    assert "rare, ipc 1: rare subgroup accuracy at its floor (10%): dm 10.5" in text
    assert "No set has its worst cluster accuracy at its floor" in text
    assert "rare dm at ipc 1: its images moved 0.005" in text
    assert "rare dm 1: the loss was still falling" in text
    assert "rests on 1 students" in text  # the fewest of any set (random: one here)


def test_toy_conclusion_counts_classes_that_reach_their_rare_mode():
    from ddcore.toy import ToyConfig, run_toy

    data, runs = run_toy(ToyConfig(iterations=3, n_per_class=40, features=16))
    text = cl.toy_conclusion(data, runs, near=0.6)
    assert text.count("classes reach their rare mode") == len(runs)


def test_d3_conclusion_and_sweep_conclusion():
    results = rows(
        {
            ("random", 1): [0.60, 0.60],
            ("random+soft", 1): [0.58, 0.60],
            ("dm", 1): [0.80, 0.80],
            ("d3", 1): [0.70, 0.70],
            ("random", 2): [0.70, 0.70],
            ("random+soft", 2): [0.70, 0.70],
            ("dm", 2): [0.84, 0.84],
            ("d3", 2): [0.60, 0.60],
        }
    ).rename(columns={"ipc": "budget"})
    results["ipc_equivalent"] = results.budget * 0.9
    text = cl.d3_conclusion(results, labeller_accuracy=90.7)
    assert "budget 1: D3 70.0% vs random+soft 59.0%: +11.0" in text
    assert "vs the best image method (dm): -10.0" in text
    assert "D3 is not monotone in its budget here: more storage gave a worse set at budget 2." in text
    assert "The labeller reaches 90.7% on the test set: soft labels carry its mistakes." in text
    assert "sits at chance" not in text
    at_chance = results.copy()
    at_chance.loc[at_chance.method == "d3", "accuracy"] = 0.105
    at_chance["label_mismatch"] = 0.9
    text = cl.d3_conclusion(at_chance, labeller_accuracy=97.0)
    assert "budget 2: D3 sits at chance (10%), the floor" in text and "90% of the priors' mean images" in text
    sweep = pd.DataFrame(
        [
            {"swept": s, "value": v, "accuracy": a, "ipc_equivalent": e}
            for s, v, a, e in (
                ("lpc", 1, 0.6, 1.0),
                ("lpc", 2, 0.5, 2.0),
                ("latent_dim", 4, 0.4, 1.8),
                ("latent_dim", 16, 0.5, 2.0),
            )
        ]
    )
    text = cl.sweep_conclusion(sweep, {"lpc": 2, "latent_dim": 16})
    assert "lpc 1 vs 2: +10.0 (noise 0.0, better); storage 1.00 vs 2.00" in text
    assert "latent_dim 4 vs 16: -10.0" in text and "sits at chance" not in text
    assert "Every variant sits at chance (10%)" in cl.sweep_conclusion(sweep.assign(accuracy=0.1), {"lpc": 2})
    fig = sweep_plot(sweep, "t")
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel().startswith("storage")
    fig = accuracy_vs_storage(results.assign(ipc_equivalent=results.budget), "t", upper=(97.0, "labeller"))
    assert any(line.get_linestyle() == ":" for line in fig.axes[0].get_lines())
    plt.close("all")


def test_accuracy_vs_ipc_draws_random_on_top_and_the_upper_bound():
    results = rows({("random", 1): [0.5, 0.52], ("dc", 1): [0.5, 0.52], ("random", 10): [0.9], ("dc", 10): [0.9]})
    ax = accuracy_vs_ipc(results, "mnist5k", "t", upper=97.0).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t for t in labels if t in ("dc", "random")] == ["dc", "random"]  # random drawn last, on top
    assert any("whole training set" in t for t in labels)
    random = [c for c in ax.containers if c.get_label() == "random"][0]
    assert random.lines[0].get_linestyle() == "--" and random.lines[0].get_zorder() > 2
    plt.close("all")


def test_distillation_progress_and_a_grid_that_keeps_snapshots(small, tiny_model, tmp_path):
    from ddcore.evaluate import EvalConfig
    from ddcore.train import TrainConfig

    options = {"dm": {"model": tiny_model, "iterations": 3, "batch_real": 4}, "random": {}}
    cfg = EvalConfig(model=tiny_model, train=TrainConfig(epochs=1), num_nets=1)
    _, sets = run_grid(small, options, [1], cfg, cache_dir=tmp_path, progress=False, snapshots={"dm": [0, 1]})
    syn = sets[("dm", 1)]
    assert syn.meta["snapshots"] == [0, 1] and [i for i, _ in syn.meta["loss_curve"]] == [0, 1, 2]
    assert image_drift(syn, small).shape == (10,)
    again = distill_cached("dm", small, 1, 0, options["dm"], None, tmp_path, False, snapshots=(0, 1))
    assert again.meta["seconds"] == syn.meta["seconds"]  # read back from the cache
    fig = distillation_progress(syn, small, "t")
    assert fig.axes[0].get_xlabel() == "iteration" and len(fig.axes) == 1 + 2 * 10 + 10  # curve + 3 rows of 10
    plt.close("all")


def test_profile_changes_lists_what_the_gpu_profile_sets_differently():
    changes = profile_changes("gpu", "01_baselines", {"width": 128, "eval_epochs": 80})
    assert "width" not in changes and changes["eval_epochs"] == (80, 1000)
