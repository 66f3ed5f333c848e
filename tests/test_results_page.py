"""The results page: rows files -> a table with verdicts -> the README's section."""

import json

import pytest

from ddcore.studies import results_page as rp


def _row(method="dsa", ipc=1, iteration=200, accuracies=(0.70, 0.71, 0.69), **extra):
    return {
        "dataset": "fashion_mnist",
        "method": method,
        "ipc": ipc,
        "seed": 0,
        "iteration": iteration,
        "students": 3,
        "epochs": 1000,
        "accuracies": list(accuracies),
        **extra,
    }


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_last_row_of_a_cell_wins(tmp_path):
    path = _write(tmp_path / "a.rows.jsonl", [_row(accuracies=(0.1, 0.1, 0.1)), _row(), _row(iteration=50)])
    rows = rp.load_rows([path])
    assert len(rows) == 2
    assert rows[rows.iteration == 200].accuracies.item() == [0.70, 0.71, 0.69]


@pytest.mark.parametrize(
    "ours, iterations, expected",
    [
        (70.6, 1000, "reproduced"),
        (69.1, 1000, "reproduced"),  # 70.6 - (0.6 + 1) = 69.0
        (68.9, 1000, "not reproduced"),
        (68.9, 200, "not yet run at the paper's iterations (200 of 1000)"),
        (71.0, 200, "reproduced"),  # a cell that already reaches it needs no more iterations
    ],
)
def test_verdict_rule(ours, iterations, expected):
    assert rp.verdict(ours, "dsa", "fashion_mnist", 1, iterations) == expected


def test_verdict_without_a_published_number():
    assert rp.verdict(80.0, "dm", "fashion_mnist", 1, 500) == "no published number"
    assert rp.verdict(80.0, "dsa", "mnist5k", 1, 500) == "no published number"


def test_table_and_render(tmp_path):
    rows = rp.load_rows(
        [
            _write(
                tmp_path / "a.rows.jsonl",
                [_row(), _row(method="random", iteration=0), _row(iteration=50, accuracies=(0.5, 0.5, 0.6))],
            )
        ]
    )
    table = rp.table(rows)
    assert list(table.method) == ["dsa", "dsa", "random"]
    last = table.iloc[1]
    assert last["ours (%)"] == "70.0 +- 1.0" and last["published (%)"] == "70.6 +- 0.6"
    assert last["verdict"] == "reproduced" and "--iterations 200" in last["command"]
    assert table.iloc[0]["verdict"].startswith("not yet run")
    assert "--iterations 200" in table.iloc[0]["command"]  # the snapshot came from the 200-iteration run
    text = rp.render(rows)
    # 3 rows, then the 4 planned Fashion-MNIST cells without one (dsa 1 and random 1 have rows); then
    # the seeds' claims at their papers' scale, none run
    scale = len(rp.PAPER_SCALE)
    assert sum(line.startswith("| ") for line in text.splitlines()) == 1 + 3 + 4 + 1 + scale
    assert text.count("| not yet run |") == 4 + scale
    assert "| fashion_mnist | dsa | 10 | 0 | - | - | 84.6 +- 0.3 |" in text
    assert "| fashion_mnist | random | 1 | - |" in text and "Robust" not in text


def test_a_run_stopped_early_names_its_plan_and_the_checkpoint(tmp_path):
    rows = rp.load_rows(
        [
            _write(
                tmp_path / "a.rows.jsonl",
                [_row(iteration=120, run_iterations=200, partial=True), _row(iteration=50, run_iterations=200)],
            )
        ]
    )
    table = rp.table(rows)
    assert table.iloc[1]["command"].endswith("--iterations 200 --from-checkpoint`")
    assert table.iloc[1]["iterations"] == 120 and table.iloc[1]["verdict"] == "reproduced"
    assert table.iloc[0]["command"].endswith("--iterations 200`")


def test_replace_section_needs_both_markers():
    with pytest.raises(ValueError, match="markers"):
        rp.replace_section("no markers here", "x")
    text = f"a\n{rp.BEGIN}\nold\n{rp.END}\nb"
    assert rp.replace_section(text, "new\n") == f"a\n{rp.BEGIN}\nnew\n{rp.END}\nb"


def test_readme_section_is_current():
    """The committed README's results section is what runs/ generates (a stale page fails here)."""
    assert rp.main(["--check"]) == 0


def test_plot_runs(tmp_path):
    rows = rp.load_rows(
        [_write(tmp_path / "a.rows.jsonl", [_row(), _row(iteration=50), _row(method="random", iteration=0)])]
    )
    losses = {
        "fashion_mnist_dsa_ipc1": rp.load_losses(
            _write(
                tmp_path / "l.loss.jsonl", [{"iteration": i, "loss": 10.0 / (i + 1), "seconds": 1.0} for i in range(30)]
            )
        )
    }
    fig = rp.plot_runs(rows, "fashion_mnist", losses)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "dsa (ours)" in labels and "random real (ours)" in labels and "dsa (published)" in labels


def test_baselines_plot_draws_the_published_fashion_mnist_marks():
    import pandas as pd

    from ddcore.studies.plots import accuracy_vs_ipc

    results = pd.DataFrame({"method": ["random", "random"], "ipc": [1, 10], "accuracy": [0.5, 0.7]})
    fig = accuracy_vs_ipc(results, "fashion_mnist", "t")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "DSA (published, full fashion_mnist)" in labels and "DC (published, full fashion_mnist)" in labels
    assert not any(
        "published" in lab
        for lab in [t.get_text() for t in accuracy_vs_ipc(results, "mnist5k", "t").axes[0].get_legend().get_texts()]
    )


def _robust(variant, seed, rare, cmin, avg=(0.9, 0.9, 0.9), ipc=10):
    return {
        "benchmark": "mnist5k_rare-invert-0p1",
        "variant": variant,
        "ipc": ipc,
        "seed": seed,
        "width": 32,
        "epochs": 300,
        "iterations": 300,
        "moved_relative": 0.3,
        "accuracy": list(avg),
        "rare_group_accuracy": list(rare),
        "cluster_min_accuracy": list(cmin),
    }


def test_robust_claim_pools_seeds_and_grades_the_claim(tmp_path):
    from ddcore.studies.robust_claim import claim_table, load_robust_rows, pooled

    plain = [_robust("dm", s, (0.50, 0.52, 0.54), (0.20, 0.21, 0.22)) for s in range(3)]
    better = [_robust("dm+cm", s, (0.70, 0.72, 0.74), (0.30, 0.31, 0.32), avg=(0.895, 0.9, 0.905)) for s in range(3)]
    worse_avg = [_robust("dm+dl", s, (0.70, 0.72, 0.74), (0.30, 0.31, 0.32), avg=(0.85, 0.85, 0.85)) for s in range(3)]
    same = [_robust("dm+default", s, (0.50, 0.53, 0.54), (0.20, 0.21, 0.22)) for s in range(3)]
    rows = load_robust_rows([_write(tmp_path / "robust_x.rows.jsonl", plain + better + worse_avg + same + [plain[0]])])
    stats = pooled(rows).set_index("variant")
    assert stats.loc["dm", "students"] == 9 and stats.loc["dm", "rare_group_accuracy_mean"] == pytest.approx(52.0)
    table = claim_table(rows).set_index("variant")
    assert list(table.index) == ["dm+cm", "dm+dl", "dm+default"]  # the plain method is the baseline, not a row
    assert table.loc["dm+cm", "verdict"] == "supported"
    assert table.loc["dm+dl", "verdict"] == "not supported (average down 5.0)"
    assert table.loc["dm+default", "verdict"].startswith("not supported (rare subgroup not up beyond noise")
    assert table.loc["dm+cm", "rare subgroup"].startswith("52.0 -> 72.0 (+20.0, noise")
    assert table.loc["dm+cm", "rare, paired by seed"] == "+20.0 / +20.0 / +20.0"
    assert table.loc["dm+default", "rare, paired by seed"] == "+0.3 / +0.3 / +0.3"
    text = rp.render(rp.load_rows([]), rows)
    assert "### Robust distillation" in text and "| mnist5k_rare-invert-0p1 | 10 | dm+cm |" in text


def test_plot_claim(tmp_path):
    from ddcore.studies.robust_claim import load_robust_rows, plot_claim

    rows = [
        {**_robust(v, s, (0.5, 0.6, 0.7), (0.2, 0.3, 0.3)), "losses": [[i, 10.0 / (i + 1)] for i in range(30)]}
        for v in ("dm", "dm+cm")
        for s in range(2)
    ]
    fig = plot_claim(load_robust_rows([_write(tmp_path / "r.jsonl", rows)]), 10)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["dm\n(2 seeds)", "dm+cm\n(2 seeds)"]
    assert len(fig.axes[1].get_lines()) == 2


def test_robust_claim_marks_metrics_at_their_floor_and_dc_against_dc(tmp_path):
    from ddcore.studies.robust_claim import claim_table, load_robust_rows

    plain = [_robust("dc", s, (0.09, 0.10, 0.11), (0.01, 0.02, 0.01), ipc=1) for s in range(2)]
    robust = [_robust("dc+target", s, (0.08, 0.09, 0.10), (0.02, 0.01, 0.02), ipc=1) for s in range(2)]
    table = claim_table(load_robust_rows([_write(tmp_path / "r.jsonl", plain + robust)])).set_index("variant")
    assert table.loc["dc+target", "rare subgroup"].endswith("at floor")
    assert not table.loc["dc+target", "average"].endswith("at floor")  # the average has no floor
    assert table.loc["dc+target", "verdict"].startswith("not supported")


def test_render_has_the_d3_section(tmp_path):
    from ddcore.studies.d3_claim import load_d3_rows

    def row(method, acc, its=None):
        return {"dataset": "mnist5k_pairs", "classes": 100, "method": method, "budget": 1, "seed": 0,
                "d3_iterations": its, "iterations": its or 300, "ipc_equivalent": 1.0, "bytes": 313600,
                "label_mismatch": None, "accuracy": [acc] * 3, "epochs": 300, "width": 32}  # fmt: skip

    d3 = load_d3_rows([_write(tmp_path / "d3.jsonl", [row("random+soft", 0.3), row("dm", 0.35), row("d3", 0.5, 100)])])
    text = rp.render(rp.load_rows([]), None, d3)
    assert "### D3: the claim at equal storage" in text
    assert "| mnist5k_pairs | 100 | 1 |" in text and "| supported |" in text


def test_robust_claim_keeps_runs_of_different_lengths_apart(tmp_path):
    from ddcore.studies.robust_claim import claim_table, load_robust_rows, plot_claim

    curve = {"losses": [[i, 10.0 / (i + 1)] for i in range(30)]}
    short = [{**_robust(v, 0, r, r), **curve} for v, r in (("dm", (0.5,) * 3), ("dm+dl", (0.8,) * 3))]
    long = [
        {**_robust(v, 0, r, r), **curve, "iterations": 1000} for v, r in (("dm", (0.6,) * 3), ("dm+dl", (0.6,) * 3))
    ]
    rows = load_robust_rows([_write(tmp_path / "r.jsonl", short + long)])
    table = claim_table(rows)
    assert table.iterations.tolist() == [300, 1000]
    assert table.verdict.tolist()[0] == "supported" and table.verdict.tolist()[1].startswith("not supported")
    fig = plot_claim(rows, 10)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "dm\n300 it.\n(1 seed)" in labels and "dm+dl\n1000 it.\n(1 seed)" in labels
    # a variant keeps its colour across run lengths, the run length sets the line style: no two curves alike
    looks = [(line.get_color(), line.get_linestyle()) for line in fig.axes[1].get_lines()]
    assert len(looks) == 4 and len(set(looks)) == 4 and len({colour for colour, _ in looks}) == 2


def test_paper_scale_lines_count_the_seeds_run_at_that_scale():
    import pandas as pd

    from ddcore.studies import results_page as page

    empty = page.paper_scale_table(pd.DataFrame(), pd.DataFrame())
    assert len(empty) == len(page.PAPER_SCALE) and set(empty.status) == {"not yet run"}
    assert all(c.startswith("`python ") for c in empty.command)
    robust = pd.DataFrame(
        [{"variant": "dm+dl", "width": w, "iterations": 1000, "seed": s} for w, s in ((128, 0), (128, 1), (32, 2))]
    )
    d3 = pd.DataFrame([{"method": "d3", "dataset": "mnist5k_pairs", "d3_iterations": 500, "seed": 0}])  # too short
    table = page.paper_scale_table(robust, d3).set_index("claim").status
    assert table["robust: DM+robust (dm+dl) vs DM"] == "run on 2 seed(s)"
    assert table["D3 beats random+soft and DM at equal storage"] == "not yet run"
