"""The conclusion's numbers against the committed run's: within the students' noise, or stale."""

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from ddcore.studies.quoted import RECORD_ENV, agree, check_quoted, compare_quoted, quoted_numbers

ROOT_NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _results(shift=0.0):
    rows = [
        {"method": m, "ipc": ipc, "accuracy": base + shift + d}
        for m, ipc, base in (("dm", 10, 0.90), ("random", 10, 0.80), ("dm", 1, 0.60))
        for d in (-0.01, 0.0, 0.01)
    ]
    return pd.DataFrame(rows)


def test_quoted_numbers_are_percent_means_per_group():
    numbers = quoted_numbers(_results(), by=("method", "ipc"))
    assert sorted(numbers) == ["method=dm ipc=1 accuracy", "method=dm ipc=10 accuracy", "method=random ipc=10 accuracy"]
    dm10 = numbers["method=dm ipc=10 accuracy"]
    assert dm10["mean"] == pytest.approx(90.0) and dm10["n"] == 3
    assert dm10["sd"] == pytest.approx(100 * (2 * 0.01**2 / 3) ** 0.5)
    with pytest.raises(ValueError, match="no column 'budget'"):
        quoted_numbers(_results(), by=("method", "budget"))


def test_agreement_is_within_the_standard_error_of_the_difference_or_the_floor():
    a = {"mean": 80.0, "sd": 3.0, "n": 3}
    ok, tol = agree(a, {"mean": 85.0, "sd": 3.0, "n": 3}, floor=1.0, k=3.0)
    assert tol == pytest.approx(3 * (2 * 9 / 3) ** 0.5) and ok  # 7.3 points: 3 noisy students each
    assert not agree(a, {"mean": 88.0, "sd": 3.0, "n": 3}, floor=1.0, k=3.0)[0]
    assert agree(a, {"mean": 88.0, "sd": 3.0, "n": 3})[0]  # the defaults: 4 standard errors, 9.8 points
    exact = {"mean": 80.0, "sd": 0.0, "n": 3}
    assert agree(exact, {"mean": 81.9, "sd": 0.0, "n": 3}) == (True, 2.0)  # the default floor: 2 points
    assert not agree(exact, {"mean": 82.1, "sd": 0.0, "n": 3})[0]
    lines = compare_quoted({"x": exact, "gone": exact}, {"x": {"mean": 70.0, "sd": 0.0, "n": 3}, "new": exact})
    assert lines == [
        "gone: committed run has it, this run does not",
        "new: this run has it, the committed run does not",
        "x: committed 80.0, now 70.0 (tolerance 2.0)",
    ]


def _committed(folder, numbers, parameters):
    nb = nbformat.v4.new_notebook()
    nb.metadata["ddcore"] = {"quoted": {"parameters": parameters, "numbers": numbers}}
    nbformat.write(nb, folder / "nb.ipynb")


def test_record_then_check_prints_the_same_line_and_a_moved_number_fails(tmp_path, monkeypatch):
    params = {"ipc": 10, "output_dir": "/somewhere", "model": None}
    numbers = quoted_numbers(_results(), by=("method", "ipc"))
    monkeypatch.setenv(RECORD_ENV, str(tmp_path / "rec.json"))
    recorded_line = check_quoted(numbers, "nb", params, folder=tmp_path)
    assert recorded_line.endswith(": True") and recorded_line.startswith("3 numbers")
    recorded = json.loads((tmp_path / "rec.json").read_text())
    assert "output_dir" not in recorded["parameters"] and recorded["numbers"] == numbers

    monkeypatch.delenv(RECORD_ENV)
    _committed(tmp_path, recorded["numbers"], recorded["parameters"])
    # another machine: the same code, a student's last bits moved (0.2 points): the same line, nbval passes
    assert check_quoted(quoted_numbers(_results(0.002), ("method", "ipc")), "nb", params, folder=tmp_path) == (
        recorded_line
    )
    # a change that moved every number by 5 points: False, and what moved
    stale = check_quoted(
        quoted_numbers(_results(0.05), ("method", "ipc")), "nb", {**params, "output_dir": "x"}, folder=tmp_path
    )
    assert stale.splitlines()[0].endswith(": False") and "method=dm ipc=10 accuracy: committed 90.0, now 95.0" in stale
    assert "nothing to compare" in check_quoted(numbers, "nb", {**params, "ipc": 1}, folder=tmp_path)
    assert "no committed notebook" in check_quoted(numbers, "other", params, folder=tmp_path)
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "bare.ipynb")
    assert "holds no recorded numbers" in check_quoted(numbers, "bare", params, folder=tmp_path)
    with pytest.raises(ValueError, match="numbers is empty"):
        check_quoted({}, "nb", params, folder=tmp_path)


def test_committed_notebooks_that_check_their_numbers_recorded_them():
    """Every notebook whose checked cell calls check_quoted was executed in place (make notebooks)
    with the recording on, and its saved line says its numbers agreed."""
    checked = 0
    for path in sorted(ROOT_NOTEBOOKS.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "check_quoted(" in "".join(c["source"])]
        if not cells:
            continue
        checked += 1
        assert "quoted" in nb["metadata"].get("ddcore", {}), f"{path.name}: no recorded numbers"
        text = "".join("".join(o.get("text", "")) for o in cells[0]["outputs"])
        assert "NBVAL_CHECK_OUTPUT" in "".join(cells[0]["source"]), path.name
        assert text.strip().endswith(": True"), f"{path.name}: {text!r}"
    assert checked >= 1
