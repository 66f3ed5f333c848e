"""bench/run.py's workload builders and FLOP rule (nothing is timed here), and the distill hook it
times with."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from ddcore.distill import distill, method_config
from ddcore.robust import RobustConfig

_spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).parents[1] / "bench" / "run.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_run"] = bench  # dataclasses look their module up while the file runs
_spec.loader.exec_module(bench)


def test_flop_rule_on_a_tiny_convnet_matches_a_hand_count(monkeypatch):
    monkeypatch.setitem(bench.SHAPES, "tiny", (1, (28, 28)))
    f = bench.per_image_flops("tiny", 4)  # 28x28 padded by 3 -> 32x32; two poolings later 8x8
    conv1, conv2, conv3 = 2 * 9 * 1 * 4 * 32 * 32, 2 * 9 * 4 * 4 * 16 * 16, 2 * 9 * 4 * 4 * 8 * 8
    linear = 2 * (4 * 4 * 4) * 10
    assert f["first"] == conv1
    assert f["embed"] == conv1 + conv2 + conv3
    assert f["forward"] == conv1 + conv2 + conv3 + linear
    fwd, emb = f["forward"], f["embed"]
    w = bench.Workload("main", "dm", "tiny", ipc=2, width=4, batch_real=5)
    assert bench.iteration_flops(w, f) == emb * (10 * 5 + 2 * 10 * 2)
    assert bench.iteration_flops(w, f, real_per_class=3) == emb * (10 * 3 + 2 * 10 * 2)  # a short class
    w = bench.Workload("main", "dc", "tiny", ipc=2, width=4, batch_real=5, outer_loop=3, inner_loop=7)
    train = 3 * fwd - conv1
    assert bench.iteration_flops(w, f) == 3 * (train * 50 + 9 * fwd * 20) + 2 * 7 * train * 20
    w = bench.Workload("memory", "mtt", "tiny", ipc=2, width=4, syn_steps=4, batch_syn=6)
    assert bench.iteration_flops(w, f) == 9 * fwd * 4 * 6
    w = bench.Workload("main", "eval", "tiny", ipc=2, width=4)
    assert bench.iteration_flops(w, f) == train * 20


def test_quick_settings_and_plan():
    s = bench.parse_settings(["--quick"])
    assert (s.shapes, s.ipcs, s.width, s.device) == (("mnist5k",), (1, 10), 32, "cpu")
    assert s.figure.startswith(s.out)  # a smoke test never overwrites figures/bench_cpu.png
    plan = bench.build_plan(s)
    main = [w for w in plan if w.table == "main"]
    assert {(w.method, w.ipc) for w in main} == {(m, k) for m in bench.METHODS for k in (1, 10)}
    assert {w.shape for w in plan} == {"mnist5k"}
    assert all(w.outer_loop <= 2 and w.inner_loop <= 2 for w in plan if w.method.startswith("dc"))
    trajectory = [w for w in plan if w.table == "memory" and w.method != "dc+robust"]
    # against syn_steps at memory_ipc, then at the largest ipc (10 here): all images, and large_batch_syn
    assert sorted((w.method, w.ipc, w.syn_steps, w.batch_syn or 0) for w in trajectory) == sorted(
        (m, 10, 2, b) for m in ("mtt", "d3") for b in (0, s.memory_batch_syn, 0, s.large_batch_syn)
    )
    assert all(w.recompute_steps is False for w in trajectory)  # what keeping every step's graph costs
    chunked = [w for w in plan if w.table == "memory" and w.method == "dc+robust"]
    assert [(w.ipc, w.robust_chunk) for w in chunked] == [(10, s.robust_chunk)]
    assert bench.method_options(chunked[0], "x")[1]["robust"].chunk_size == s.robust_chunk
    assert [w for w in plan if w.method == "d3" and w.ipc == 1][0].samples_per_prior == 2


def test_full_plan_and_options():
    s = bench.parse_settings(["--only", "dm", "dc", "mtt", "d3"])
    assert s.figure == "results/bench/bench_cpu_subset.png" and s.ipcs == (1, 10, 50)  # a subset of the methods
    plan = bench.build_plan(s)
    assert {w.method for w in plan} == {"dm", "dc", "mtt", "d3"}
    dc50 = [w for w in plan if w.method == "dc" and w.ipc == 50][0]  # capped: 2 of the reference's 50
    assert (dc50.outer_loop, dc50.reference_outer, dc50.inner_loop, dc50.warmup, dc50.repeats) == (2, 50, 10, 0, 3)
    dc1 = [w for w in plan if w.method == "dc" and w.ipc == 1][0]
    assert (dc1.outer_loop, dc1.reference_outer, dc1.warmup) == (1, None, 1)
    full = bench.build_plan(bench.parse_settings(["--only", "dc", "--dc-outer-cap", "0"]))
    assert [(w.outer_loop, w.repeats) for w in full if w.ipc == 50][0] == (50, 1)  # heavy: one iteration
    dm10 = [w for w in plan if w.method == "dm" and w.ipc == 10][0]
    assert (dm10.width, dm10.batch_real, dm10.warmup, dm10.repeats) == (128, 256, 1, 5)
    name, options = bench.method_options([w for w in plan if w.method == "d3"][0], "x")
    cfg = method_config(name, **options)
    assert (cfg.matching, cfg.mmd_weight > 0, cfg.soft_labels, cfg.iterations) == ("mtt", True, False, 6)
    with pytest.raises(SystemExit):
        bench.parse_settings(["--only", "nope"])


def test_memory_at_defaults_rows_for_mtt_and_d3_at_ipc_50():
    s = bench.parse_settings(["--only", "mtt", "d3", "--shapes", "cifar10"])
    plan = bench.build_plan(s)
    for method in ("mtt", "d3"):
        default = [w for w in plan if w.table == "main" and w.method == method and w.ipc == 50]
        others = [w for w in plan if w.table == "memory" and w.method == method and w.ipc == 50]
        assert [(w.batch_syn, w.recompute_steps) for w in default] == [(None, None)]  # the config's own rule
        assert {(w.batch_syn, w.recompute_steps) for w in others} == {(None, False), (s.large_batch_syn, False)}
        assert bench.recomputed(default[0]) and not any(bench.recomputed(w) for w in others)
        _, options = bench.method_options(default[0], "x")
        cfg = method_config(method, **options)
        assert (cfg.batch_syn, cfg.recompute_steps) == (None, None)
        row = bench.summarize(default[0], "failed: exit code -9", s)
        assert row["recomputed"] is True and bench.settings_label(row).endswith("recomp")
    assert not bench.recomputed(bench.Workload("main", "mtt", "cifar10", ipc=10, syn_steps=10))  # 1,000 image-steps
    assert bench.recomputed(bench.Workload("main", "d3", "cifar10", ipc=10, syn_steps=10))  # means and draws: 2,000


def test_random_cifar10_has_the_shape_and_enough_images_per_class():
    data = bench.random_cifar10(per_class=260)
    assert data.images_train.shape == (2600, 3, 32, 32) and data.num_classes == 10
    assert min(len(i) for i in data.indices_per_class()) >= 256


def test_on_iteration_reports_each_iteration_without_changing_the_result(small, tiny_model):
    calls = []
    kwargs = dict(iterations=3, model=tiny_model, batch_real=8, progress=False)
    syn = distill("dm", small, ipc=1, on_iteration=lambda *a: calls.append(a), **kwargs)
    plain = distill("dm", small, ipc=1, **kwargs)
    assert [c[0] for c in calls] == [0, 1, 2] and all(c[2] >= 0 for c in calls)
    assert calls[-1][1] == syn.meta["final_loss"]
    assert torch.equal(syn.images, plain.images)


def test_a_failed_worker_gives_a_row_with_its_status(capsys):
    s = bench.parse_settings(["--quick"])
    w = bench.build_plan(s)[0]
    row = bench.summarize(w, "failed: exit code -9", s)
    assert row["status"].startswith("failed") and row["median_s"] is None
    bench.print_row(row)
    assert "exit code -9" in capsys.readouterr().out
    ok = bench.summarize(
        w, {"seconds": [2.0, 1.0, 4.0], "gflop": 8.0, "matmul_gflops": 4.0, "setup_mib": 1.0, "peak_mib": 2.0}, s
    )
    assert (ok["status"], ok["median_s"], ok["min_s"], ok["max_s"], ok["gflops"], ok["ratio"]) == (
        "ok",
        2.0,
        1.0,
        4.0,
        4.0,
        1.0,
    )


def test_dc_robust_adds_only_the_subpopulation_embeddings_with_the_default_target_risk():
    """With dc_risk 'target' the robust real gradient replaces plain DC's: the extra conv FLOPs are
    the embeddings of each class's real and synthetic batch, per outer step (the rule once also
    counted a training pass on the real batch, which gave ratios above 1)."""
    assert bench.RobustConfig().dc_risk == "target"
    s = bench.parse_settings(["--only", "dc", "dc+robust"])
    plan = [w for w in bench.build_plan(s) if w.ipc == 10 and w.shape == "mnist5k" and w.table == "main"]
    dc, robust = sorted(plan, key=lambda w: w.method)
    f = bench.per_image_flops(dc.shape, dc.width)
    extra = bench.iteration_flops(robust, f) - bench.iteration_flops(dc, f)
    assert extra == dc.outer_loop * f["embed"] * 10 * (dc.batch_real + dc.ipc)


def test_a_capped_dc_row_estimates_the_full_iteration_at_the_same_rate():
    s = bench.parse_settings(["--only", "dc"])
    w = [w for w in bench.build_plan(s) if w.ipc == 10 and w.shape == "mnist5k"][0]
    f = bench.per_image_flops(w.shape, w.width)
    capped = bench.iteration_flops(w, f)
    full = bench.iteration_flops(bench.dataclasses.replace(w, outer_loop=10), f)
    row = bench.summarize(
        w,
        {"seconds": [3.0, 2.0, 4.0], "gflop": capped / 1e9, "matmul_gflops": 100.0, "setup_mib": 1.0, "peak_mib": 2.0},
        s,
    )
    assert row["est_full_s"] == pytest.approx(3.0 * full / capped) and full > 3 * capped
    assert bench.settings_label(row) == "outer 2 of 10 inner 50"


def test_tables_option_keeps_only_the_tables_asked_for():
    main_only = bench.build_plan(bench.parse_settings(["--only", "mtt", "--tables", "main"]))
    memory_only = bench.build_plan(bench.parse_settings(["--only", "mtt", "--tables", "memory"]))
    assert main_only and {w.table for w in main_only} == {"main"}
    assert memory_only and {w.table for w in memory_only} == {"memory"}
    with pytest.raises(SystemExit):
        bench.parse_settings(["--tables", "speed"])


def test_robust_rows_run_robust_config_defaults_beside_their_plain_method():
    s = bench.parse_settings(["--quick", "--only", "dm", "dm+robust", "d3", "d3+robust"])
    plan = [w for w in bench.build_plan(s) if w.table == "main"]
    for method in ("dm+robust", "d3+robust"):
        w = next(w for w in plan if w.method == method and w.ipc == 10)
        name, options = bench.method_options(w, "x")
        assert name == bench.base_method(method) and options["robust"] == RobustConfig()
        plain = next(p for p in plan if p.method == name and p.ipc == 10)
        assert bench.method_options(plain, "x")[1]["robust"] is None
        f = bench.per_image_flops(w.shape, w.width)
        assert bench.iteration_flops(w, f) == bench.iteration_flops(plain, f)
    rows = [
        {"table": "main", "status": "ok", "method": m, "shape": "mnist5k", "ipc": 10, "median_s": t}
        for m, t in (("dm", 1.0), ("dm+robust", 1.2), ("dc", 2.0), ("dc+robust", 5.0), ("d3+robust", 3.0))
    ]
    assert bench.robust_ratios(rows) == [("dm+robust", "mnist5k", 10, 1.2), ("dc+robust", "mnist5k", 10, 2.5)]


def test_only_a_full_run_redraws_the_tracked_figure():
    assert bench.parse_settings([]).figure == "figures/bench_cpu.png"
    for argv in (["--only", "dm"], ["--ipcs", "50"], ["--shapes", "cifar10"], ["--tables", "main"], ["--quick"]):
        figure = bench.parse_settings([*argv, "--out", "results/x"]).figure
        assert figure.startswith("results/x/") and not figure.startswith("figures"), argv


def test_resume_keeps_an_earlier_runs_ok_rows_and_times_only_the_rest(tmp_path, monkeypatch):
    timed = []

    def fake_run(w, s, path, experts_dir):
        timed.append(w)
        return {"seconds": [1.0, 2.0], "gflop": 4.0, "matmul_gflops": 8.0, "setup_mib": 1.0, "peak_mib": 2.0}

    monkeypatch.setattr(bench, "run_workload", fake_run)
    monkeypatch.setattr(bench, "prepare", lambda s, plan, out: ({w.shape: None for w in plan}, out / "experts"))
    monkeypatch.setattr(bench, "matmul_gflops", lambda *a: 8.0)
    monkeypatch.setattr(bench, "plot", lambda rows, s, label: Path(s.figure))
    argv = ["--quick", "--only", "dm", "eval", "--tables", "main", "--threads", "1", "--out", str(tmp_path)]
    plan = bench.build_plan(bench.parse_settings(argv))
    csv_path = tmp_path / "bench_cpu_quick.csv"

    bench.main(argv)  # a first run, stopped after it had timed every workload
    first = bench.read_csv(csv_path)
    assert len(timed) == len(plan) == len(first) > 2
    first[1] = {**first[1], "status": "failed: exit code -9", "median_s": None}  # one row failed then
    bench.write_csv(first, csv_path)

    timed.clear()
    bench.main([*argv, "--resume"])
    assert [bench.workload_key(w) for w in timed] == [bench.workload_key(plan[1])]  # only the failed one again
    again = bench.read_csv(csv_path)
    assert [bench.workload_key(r) for r in again] == [bench.workload_key(w) for w in plan]  # the plan's order
    assert again[0] == first[0] and again[1]["status"] == "ok"

    # a narrowed resume (one method of the two) retimes a missing row and keeps the other method's rows
    dm_row = next(i for i, w in enumerate(plan) if w.method == "dm")
    bench.write_csv([r for i, r in enumerate(again) if i != dm_row], csv_path)
    timed.clear()
    bench.main([*argv[:3], *argv[4:], "--resume"])  # --only dm
    assert [bench.workload_key(w) for w in timed] == [bench.workload_key(plan[dm_row])]
    narrowed = bench.read_csv(csv_path)
    assert [bench.workload_key(r) for r in narrowed] == [bench.workload_key(w) for w in plan]  # same order
    eval_rows = [r for r in again if r["method"] == "eval"]
    assert eval_rows and all(r in narrowed for r in eval_rows)  # unchanged, not dropped

    timed.clear()
    bench.main(argv)  # without --resume: a fresh run times everything
    assert len(timed) == len(plan)
    with pytest.raises(SystemExit, match="--threads"):  # rows of another thread count do not compare
        bench.main([*argv[:-4], "--threads", "2", "--out", str(tmp_path), "--resume"])


def test_plot_of_one_ipc_gives_every_panel_a_range_around_it(tmp_path):
    """A subset run (--ipcs 10, two shapes) drew its second panel without an x range before."""
    import matplotlib.pyplot as plt

    s = bench.parse_settings(["--ipcs", "10", "--only", "mtt", "--tables", "main", "--out", str(tmp_path)])
    rows = [
        dict(table="main", status="ok", shape=shape, method="mtt", ipc=10, median_s=m, min_s=m - 0.1, max_s=m + 0.1)
        for shape, m in (("mnist5k", 5.0), ("cifar10", 5.1))
    ]
    path = bench.plot(rows, s, "a CPU")
    axes = plt.gcf().axes
    plt.close("all")
    assert path.exists() and len(axes) == 2
    for ax in axes:
        lo, hi = ax.get_xlim()
        assert lo < 10 < hi and hi / lo > 2
