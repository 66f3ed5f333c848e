"""The robust comparison grid of notebook 02, its tables, verdicts, PCA view and figures (tiny inputs)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import ddcore.studies.experiment  # noqa: E402
from ddcore.augment import dsa_for  # noqa: E402
from ddcore.distill import distill  # noqa: E402
from ddcore.evaluate import EvalConfig, evaluate_robustness  # noqa: E402
from ddcore.models import ModelConfig  # noqa: E402
from ddcore.robust import RobustConfig  # noqa: E402
from ddcore.studies import robust_experiment as rx  # noqa: E402
from ddcore.studies import robust_plots  # noqa: E402
from ddcore.train import TrainConfig  # noqa: E402

FAST = EvalConfig(model=ModelConfig(width=8), train=TrainConfig(epochs=1), num_nets=2)
DM = {"iterations": 1, "batch_real": 8, "model": ModelConfig(width=8)}
ROBUST = RobustConfig(clustering="kmeans", k=2, space="pixels", dm_objective="cluster_means")
CORRUPT = ("invert",)


@pytest.fixture(scope="module")
def grid(small, tmp_path_factory):
    benches = rx.make_benchmarks(small, rare_fraction=0.2)
    variants = rx.robust_variants({"dm": DM}, ROBUST)
    cache = tmp_path_factory.mktemp("cache")
    results, sets = rx.run_robust_grid(
        benches, variants, [1], FAST, cache_dir=str(cache), k=3, corruptions={"plain": CORRUPT}
    )
    return benches, variants, cache, results, sets


def test_variants_pair_each_method_with_its_robust_version():
    variants = rx.robust_variants({"dm": DM, "dc": {"iterations": 1}}, ROBUST)
    assert list(variants) == ["dm", "dm+robust", "dc", "dc+robust"]
    assert "robust" not in variants["dm"][1] and variants["dm+robust"] == ("dm", {**DM, "robust": ROBUST})
    with pytest.raises(ValueError, match="no robust variant"):
        rx.robust_variants({"random": {}}, ROBUST)
    with pytest.raises(ValueError, match="already hold 'robust'"):
        rx.robust_variants({"dm": {"robust": ROBUST}}, ROBUST)
    with pytest.raises(TypeError, match="no option"):
        rx.robust_variants({"dm": {"iteration": 1}}, ROBUST)


def test_grid_rows_hold_every_metric(grid):
    benches, _, _, results, sets = grid
    assert len(results) == 2 * 2 * 1 * 2  # benchmarks x variants x ipcs x students
    assert set(sets) == {(b, m, 1) for b in ("plain", "rare") for m in ("dm", "dm+robust")}
    assert set(results.method) == {"dm", "dm+robust"} and set(results.benchmark) == {"plain", "rare"}
    clusters = results[["cluster_0", "cluster_1", "cluster_2"]]
    assert (clusters.min(axis=1) == results.cluster_min_accuracy).all()
    assert results.cluster_mean_accuracy.tolist() == pytest.approx(clusters.mean(axis=1).tolist())
    rare, plain = results[results.benchmark == "rare"], results[results.benchmark == "plain"]
    assert rare.rare_group_accuracy.notna().all() and plain.rare_group_accuracy.isna().all()
    assert (rare.worst_group_accuracy == rare[["common_group_accuracy", "rare_group_accuracy"]].min(axis=1)).all()
    assert plain.accuracy_invert.notna().all() and rare.accuracy_invert.isna().all()  # corruptions per benchmark
    assert "accuracy_blur" not in results


def test_the_rare_draw_does_not_coincide_with_the_initial_synthetic_images(small):
    # Seeded alike, make_rare_subgroups and the random initialisation would pick the same images.
    rare = rx.make_benchmarks(small, rare_fraction=0.2, seed=0)["rare"]
    syn = distill("random", rare.dataset, ipc=2, seed=0)
    inverted = rare.dataset.to_unit(syn.images).mean((1, 2, 3)) > 0.5
    assert inverted.float().mean() < 0.6
    inverted_train = rare.dataset.to_unit(rare.dataset.images_train).mean((1, 2, 3)) > 0.5
    assert int(rare.train_groups.sum()) == int(inverted_train.sum())
    # the name carries the variant (no stale cache across fractions) and still reads as digits (no flips)
    assert rare.dataset.name == f"{small.name}_rare-invert-0p2" and "flip" not in dsa_for(rare.dataset.name).families


def test_evaluate_cell_agrees_with_evaluate_robustness(grid):
    benches, _, _, results, sets = grid
    bench, syn = benches["rare"], sets[("rare", "dm+robust", 1)]
    ours = rx.evaluate_cell(syn, bench, FAST, k=3, corruptions=CORRUPT)
    ref = evaluate_robustness(syn, bench.dataset, FAST, test_groups=bench.test_groups, k=3, corruptions=CORRUPT)
    for col in ("accuracy", "cluster_min_accuracy", "cluster_mean_accuracy", "accuracy_invert", "worst_group_accuracy"):
        assert ours[col].tolist() == pytest.approx(ref[col].tolist()), col
    assert ours.rare_group_accuracy.tolist() == pytest.approx(ref.group_1.tolist())


def test_a_second_run_reads_the_cache(grid, monkeypatch):
    benches, variants, cache, results, _ = grid

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(ddcore.studies.experiment, "distill", fail)
    monkeypatch.setattr(rx, "evaluate_cell", fail)
    again, _ = rx.run_robust_grid(benches, variants, [1], FAST, cache_dir=cache, k=3, corruptions={"plain": CORRUPT})
    pd.testing.assert_frame_equal(again, results, check_dtype=False)


def test_sweep_sets_one_field_at_a_time(grid):
    benches, _, cache, _, _ = grid
    sweep = rx.robust_sweep(
        benches["rare"], "dm", DM, ROBUST, 1, {"alpha": [0.5, 1.0], "k": [1]}, FAST, cache_dir=cache, k=3
    )
    assert len(sweep) == 3 * 2 and sweep.method.eq("dm+robust").all()
    assert sweep.groupby(["param", "value"]).size().to_dict() == {("alpha", 0.5): 2, ("alpha", 1.0): 2, ("k", 1): 2}
    with pytest.raises(ValueError, match="needs clustering='kmeans'"):
        rx.robust_sweep(benches["rare"], "dm", DM, RobustConfig(), 1, {"k": [2]}, FAST)
    with pytest.raises(ValueError, match="sweep parameter"):
        rx.robust_sweep(benches["rare"], "dm", DM, ROBUST, 1, {"beta": [2]}, FAST)


def _fake_results() -> pd.DataFrame:
    """Two students per (benchmark, method); robust gains 10 points on the worst cluster and the rare
    group of the rare benchmark, and loses 10 on the plain benchmark's worst cluster."""
    rows = []
    for bench, robust_min in (("rare", 0.6), ("plain", 0.4)):
        for method, acc, cmin, rare in (("dm", (0.9, 0.9), 0.5, 0.4), ("dm+robust", (0.89, 0.91), robust_min, 0.5)):
            for net in (0, 1):
                rows.append(
                    {
                        "benchmark": bench,
                        "method": method,
                        "ipc": 1,
                        "net": net,
                        "accuracy": acc[net],
                        "cluster_min_accuracy": cmin,
                        "rare_group_accuracy": rare if bench == "rare" else float("nan"),
                    }
                )
    return pd.DataFrame(rows)


def test_gains_verdicts_and_conclusion_follow_the_numbers():
    gains = rx.robust_gains(_fake_results())
    rare_min = gains[(gains.benchmark == "rare") & (gains.metric == "cluster_min_accuracy")].iloc[0]
    assert rare_min["diff"] == pytest.approx(10.0) and rare_min.noise == 0 and rare_min.beyond_noise
    avg = gains[(gains.benchmark == "rare") & (gains.metric == "accuracy")].iloc[0]
    assert avg["diff"] == pytest.approx(0.0) and avg.noise == pytest.approx(1.0) and not avg.beyond_noise
    assert not ((gains.benchmark == "plain") & (gains.metric == "rare_group_accuracy")).any()
    table = rx.gains_table(gains).set_index("benchmark")
    assert table.loc["rare", "cluster min"] == "+10.0 (0.0)" and table.loc["plain", "rare subgroup"] == "n/a"
    assert list(table.columns) == ["method", "ipc", "average", "cluster min", "rare subgroup"]
    verdicts = rx.claim_verdicts(gains).set_index("benchmark")
    assert verdicts.loc["rare", "claim_holds"] and not verdicts.loc["plain", "claim_holds"]
    assert verdicts.loc["plain", "rare_up"] is None
    text = rx.conclusion_text(gains, verdicts.reset_index())
    assert "cluster min -10.0 (noise 0.0, worse)" in text and "rare subgroup +10.0 (noise 0.0, better)" in text
    assert text.endswith(
        "The claim holds in 1 of 2 comparisons (worst cluster and rare subgroup up beyond "
        "noise, average not down beyond noise)."
    )


def test_summary_table_formats_mean_std_and_marks_what_does_not_apply():
    table = rx.summary_table(_fake_results()).set_index(["benchmark", "method"])
    assert table.loc[("rare", "dm+robust"), "average"] == "90.0 +- 1.0"
    assert table.loc[("plain", "dm"), "rare subgroup"] == "n/a"
    assert table.loc[("rare", "dm"), "cluster min"] == "50.0 +- 0.0"
    assert "blur" not in table.columns


def test_pca_frame_projects_one_class_and_its_synthetic_images(grid):
    benches, _, _, _, sets = grid
    bench = benches["rare"]
    frame = rx.pca_frame(bench, 3, 4, {"dm": sets[("rare", "dm", 1)], "dm+robust": sets[("rare", "dm+robust", 1)]})
    real = frame[frame.source == "real"]
    in_class = bench.dataset.labels_train == 3
    assert len(real) == int(in_class.sum()) and set(real.cluster) <= set(range(4))
    assert (real.group == "rare").sum() == int(bench.train_groups[in_class].sum())
    assert real[["pc1", "pc2"]].mean().abs().max() < 1e-4  # PCA centres the real images
    assert frame[frame.group == "synthetic"].source.value_counts().to_dict() == {"dm": 1, "dm+robust": 1}
    assert len(frame.attrs["explained"]) == 2
    with pytest.raises(ValueError, match="cls"):
        rx.pca_frame(bench, 10, 4, {})


def test_figures_draw_labelled_axes(grid, small):
    benches, _, cache, results, sets = grid
    sweep = rx.robust_sweep(benches["rare"], "dm", DM, ROBUST, 1, {"alpha": [0.5, 1.0]}, FAST, cache_dir=cache, k=3)
    frame = rx.pca_frame(benches["rare"], 0, 2, {"dm": sets[("rare", "dm", 1)]})
    figures = [
        robust_plots.cluster_accuracy_plot(results, "t"),
        robust_plots.subgroup_accuracy_plot(results, "t"),
        robust_plots.sweep_plot(sweep, "t"),
        robust_plots.pca_plot(frame, "t"),
        robust_plots.class_images_plot({k[1]: s for k, s in sets.items() if k[0] == "rare"}, 0, small, "t"),
    ]
    for fig in figures[:4]:
        assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    assert len(figures[4].axes) == 2 and figures[4].axes[0].get_ylabel() == "dm"
    plt.close("all")
