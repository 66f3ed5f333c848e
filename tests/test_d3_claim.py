"""The D3 claim page: rows of bench/d3_table.py -> storage table, claim verdicts, learning curve."""

import json

import matplotlib

matplotlib.use("Agg")

from ddcore.studies import d3_claim as dc


def _row(method, budget=1, seed=0, acc=(0.5, 0.5, 0.5), d3_iterations=None, **extra):
    return {
        "dataset": "mnist5k_pairs",
        "classes": 100,
        "method": method,
        "budget": budget,
        "seed": seed,
        "d3_iterations": d3_iterations,
        "iterations": d3_iterations or 300,
        "ipc_equivalent": float(budget),
        "bytes": 1000 * budget,
        "label_mismatch": 0.1 if method.startswith("d3") else None,
        "accuracy": list(acc),
        "epochs": 300,
        "width": 32,
        **extra,
    }


def _rows(tmp_path, records):
    path = tmp_path / "d3.rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return dc.load_d3_rows([path])


def test_d3_better_than_both_baselines_is_supported(tmp_path):
    rows = _rows(
        tmp_path,
        [
            _row("random+soft", acc=(0.40, 0.41, 0.39)),
            _row("dm", acc=(0.45, 0.46, 0.44)),
            _row("d3", acc=(0.60, 0.61, 0.59), d3_iterations=500),
            _row("d3", acc=(0.10, 0.10, 0.10), d3_iterations=40),  # a shorter run: only the curve
        ],
    )
    claim = dc.claim_table(rows)
    assert claim.verdict.item() == "supported"
    assert claim["D3 iterations"].item() == 500
    curve = dc.curve_table(rows)
    assert list(curve["D3 iterations"]) == [40, 500]
    fast = _rows(tmp_path, [_row("d3", d3_iterations=500), _row("d3@lr_prior0.01", d3_iterations=150)])
    table = dc.storage_table(fast)
    assert set(table.method) == {"d3", "d3@lr_prior0.01"} and set(table.iterations) == {500, 150}
    assert len(dc.plot_d3(fast, "mnist5k_pairs").axes[0].get_lines()) >= 2


def test_d3_within_noise_or_below_is_not_supported(tmp_path):
    within = _rows(
        tmp_path,
        [
            _row("random+soft", acc=(0.40, 0.50, 0.45)),
            _row("dm", acc=(0.3,) * 3),
            _row("d3", acc=(0.46,) * 3, d3_iterations=9),
        ],
    )
    assert dc.claim_table(within).verdict.item() == "not shown at 9 of the authors' 8,000 iterations"
    assert dc.claim_verdict(["within noise", "better"], 8000) == "not supported (within noise of a baseline)"
    assert dc.claim_verdict(["worse", "better"], 9000, classes=10).endswith(
        "(10 classes: the control, not the claim's setting)"
    )
    below = _rows(
        tmp_path,
        [_row("random+soft", acc=(0.6,) * 3), _row("dm", acc=(0.3,) * 3), _row("d3", acc=(0.4,) * 3, d3_iterations=9)],
    )
    assert dc.claim_table(below).verdict.item().startswith("not shown at 9 of")
    assert dc.claim_verdict(["worse", "better"], 8000).startswith("not supported (D3 below")


def test_baseline_on_other_seeds_only_is_not_yet_run(tmp_path):
    rows = _rows(
        tmp_path,
        [_row("random+soft", seed=1), _row("dm", seed=0), _row("d3", seed=0, acc=(0.9,) * 3, d3_iterations=9)],
    )
    line = dc.claim_table(rows).iloc[0]
    assert line["D3 vs random+soft"] == "not yet run" and line.verdict == "not yet run"


def test_last_row_of_a_cell_wins_and_table_orders_methods(tmp_path):
    rows = _rows(tmp_path, [_row("dm", acc=(0.1,) * 3), _row("dm", acc=(0.3,) * 3), _row("random")])
    table = dc.storage_table(rows)
    assert list(table.method) == ["random", "dm"]
    assert table[table.method == "dm"]["accuracy (%)"].item() == "30.0 +- 0.0"


def test_plot_has_both_panels(tmp_path):
    rows = _rows(
        tmp_path,
        [_row("random+soft"), _row("d3", d3_iterations=40), _row("d3", d3_iterations=500, acc=(0.6,) * 3)]
        + [_row("random+soft", budget=2), _row("d3", budget=2, d3_iterations=500)],
    )
    fig = dc.plot_d3(rows, "mnist5k_pairs")
    storage_ax, curve_ax = fig.axes
    assert {t.get_text() for t in storage_ax.get_legend().get_texts()} == {"random+soft", "d3"}
    assert len(curve_ax.get_lines()) >= 2


def test_a_longer_run_on_fewer_seeds_joins_the_curve_not_the_claim(tmp_path):
    seeds = (0, 1, 2)
    rows = _rows(
        tmp_path,
        [_row(m, seed=s, acc=(0.5,) * 3) for m in ("random+soft", "dm") for s in seeds]
        + [_row("d3", seed=s, acc=(0.6,) * 3, d3_iterations=500) for s in seeds]
        + [_row("d3", seed=0, acc=(0.9,) * 3, d3_iterations=2000)],  # one seed so far
    )
    claim = dc.claim_table(rows)
    assert claim["D3 iterations"].item() == 500 and "3 seeds" in claim["D3 vs dm"].item()
    assert list(dc.curve_table(rows)["D3 iterations"]) == [500, 2000]
    more = _rows(tmp_path, [*rows.to_dict("records"), *(_row("d3", seed=s, d3_iterations=2000) for s in (1, 2))])
    assert dc.claim_table(more)["D3 iterations"].item() == 2000  # as many seeds: the longer run
