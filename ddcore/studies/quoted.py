"""The numbers a notebook's conclusion quotes, checked against the committed run's.

nbval (`make test`, CI) executes every notebook again and compares the saved output of each cell
marked `# NBVAL_CHECK_OUTPUT` with the new one, as text. A trained network's accuracy cannot be
compared as text: another CPU or thread count changes the last bits of the arithmetic, and 300
epochs later a student can land a point away. So a notebook prints its conclusion's numbers in an
unchecked cell, and a checked cell prints one line from `check_quoted`:

    12 numbers the conclusion quotes agree with the committed run's (each within max(2 points, 4 standard errors)): True

Each number is a mean over students with its spread, {"mean", "sd", "n"} in percent. Two runs of
the same code agree on it when |mean_now - mean_committed| <= max(floor, k * se), with
se = sqrt(sd_now^2 / n_now + sd_committed^2 / n_committed), the standard error of the difference
of the two means; floor 2 points and k 4 by default, wide on purpose: with 2-3 students the sd itself
is a rough estimate, a notebook quotes 4-40 numbers, and a false alarm stops CI. A change that matters
(a broken method at chance, a default that moved an accuracy by several points) still fails: a
notebook whose code or library moved a quoted number beyond that prints False and the numbers that
moved, and nbval fails, since the committed outputs are stale.

Where the committed numbers come from: `python -m ddcore.reproduce --in-place` (`make notebooks`)
sets DDCORE_RECORD_QUOTED to a file; `check_quoted` then writes this run's numbers and parameters
there (and prints the line above, True), and reproduce keeps them in the notebook's metadata,
"ddcore": {"quoted": {...}}, beside the digest of its code. Every other run reads them from the
committed notebook (`<notebook>.ipynb` in the working directory, which is notebooks/ for nbval,
papermill via reproduce and JupyterLab). A run with other parameters than the committed run's
says so instead of comparing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from ..checks import check_float
from ..io import atomic_write_bytes
from .report import _jsonable

__all__ = ["RECORD_ENV", "IGNORED_PARAMETERS", "quoted_numbers", "agree", "compare_quoted", "check_quoted"]

RECORD_ENV = "DDCORE_RECORD_QUOTED"
# Parameters that do not change what a notebook computes (where files go, what is shown, threads:
# the last bits only, which the tolerance covers): a run that differs only in these still compares.
IGNORED_PARAMETERS = frozenset(
    {"output_dir", "figures_dir", "progress", "live_view", "data_root", "download", "threads", "device"}
)


def quoted_numbers(
    results: pd.DataFrame, by: tuple[str, ...], metrics: tuple[str, ...] = ("accuracy",)
) -> dict[str, dict]:
    """{"method=dm ipc=10 accuracy": {"mean", "sd", "n"}, ...}: each metric's mean and population sd
    over the rows of each group (one row per student), in percent (the metrics are fractions)."""
    for column in (*by, *metrics):
        if column not in results.columns:
            raise ValueError(f"results have no column {column!r}; columns: {sorted(results.columns)}")
    numbers = {}
    for keys, group in results.groupby(list(by), sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        label = " ".join(f"{name}={_plain(value)}" for name, value in zip(by, keys))
        for metric in metrics:
            values = group[metric].dropna().astype(float) * 100
            if len(values):
                numbers[f"{label} {metric}"] = {
                    "mean": float(values.mean()),
                    "sd": float(values.std(ddof=0)),
                    "n": int(len(values)),
                }
    return numbers


def agree(committed: dict, now: dict, floor: float = 2.0, k: float = 4.0) -> tuple[bool, float]:
    """(whether two {"mean", "sd", "n"} agree, the tolerance): |diff| <= max(floor, k * se)."""
    se = math.sqrt(committed["sd"] ** 2 / committed["n"] + now["sd"] ** 2 / now["n"])
    tolerance = max(floor, k * se)
    return abs(now["mean"] - committed["mean"]) <= tolerance, tolerance


def compare_quoted(committed: dict, now: dict, floor: float = 2.0, k: float = 4.0) -> list[str]:
    """What disagrees between two {label: number} dicts, one line each; [] when they agree."""
    lines = [f"{label}: committed run has it, this run does not" for label in sorted(set(committed) - set(now))]
    lines += [f"{label}: this run has it, the committed run does not" for label in sorted(set(now) - set(committed))]
    for label in sorted(set(committed) & set(now)):
        ok, tolerance = agree(committed[label], now[label], floor, k)
        if not ok:
            lines.append(
                f"{label}: committed {committed[label]['mean']:.1f}, now {now[label]['mean']:.1f} "
                f"(tolerance {tolerance:.1f})"
            )
    return lines


def check_quoted(
    numbers: dict[str, dict], notebook: str, parameters: dict, floor: float = 2.0, k: float = 4.0, folder="."
) -> str:
    """The line a notebook's checked cell prints (see the module's docstring); records instead when
    DDCORE_RECORD_QUOTED names a file."""
    check_float("floor", floor, low=0.0)
    check_float("k", k, low=0.0)
    if not numbers:
        raise ValueError("numbers is empty: pass quoted_numbers(...) of the results the conclusion quotes")
    rule = f"each within max({floor:g} points, {k:g} standard errors)"
    head = f"{len(numbers)} numbers the conclusion quotes agree with the committed run's ({rule}):"
    parameters = _comparable(parameters)
    record_to = os.environ.get(RECORD_ENV)
    if record_to:
        payload = {"parameters": parameters, "numbers": numbers, "floor": floor, "k": k}
        atomic_write_bytes(Path(record_to), json.dumps(_jsonable(payload), indent=1).encode())
        return f"{head} True"
    path = Path(folder) / f"{notebook}.ipynb"
    if not path.exists():
        return f"no committed notebook {path} to compare with"
    committed = json.loads(path.read_text()).get("metadata", {}).get("ddcore", {}).get("quoted")
    if committed is None:
        return f"{path} holds no recorded numbers: execute it with `make notebooks` to record them"
    changed = sorted(
        name
        for name in set(parameters) | set(committed["parameters"])
        if parameters.get(name) != committed["parameters"].get(name)
    )
    if changed:
        return f"this run's parameters differ from the committed run's ({', '.join(changed)}): nothing to compare"
    problems = compare_quoted(committed["numbers"], numbers, floor, k)
    return "\n".join([f"{head} {not problems}", *problems])


def _comparable(parameters: dict) -> dict:
    """The parameters that decide the numbers, as JSON values (what a recorded run stores)."""
    return _jsonable({k: v for k, v in parameters.items() if k not in IGNORED_PARAMETERS})


def _plain(value):
    """1.0 -> 1 for labels; other values as they are."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
