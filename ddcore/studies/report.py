"""Saving what a notebook produced: figures and results files, each with the parameters that made it."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd

from ..checks import check_writable_dir
from ..io import atomic_write_bytes


def output_name(notebook: str, **params) -> str:
    """A file stem built from the parameters that matter, e.g. '00_quickstart_mnist5k_ipc10'."""
    parts = [notebook] + [f"{k}{v}" if k not in ("dataset",) else str(v) for k, v in params.items()]
    return "_".join(str(p).replace("/", "-").replace(" ", "") for p in parts)


def save_figure(fig, figures_dir: str | Path, name: str, parameters: dict) -> Path:
    """Save `fig` as PNG (atomically) and a JSON sidecar with the parameters beside it."""
    check_writable_dir("figures_dir", figures_dir)
    path = Path(figures_dir) / f"{name}.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(_jsonable(parameters), indent=1).encode())
    return path


def save_results(
    output_dir: str | Path, notebook: str, parameters: dict, table: pd.DataFrame, extra: dict | None = None
) -> Path:
    """Write `<output_dir>/<notebook>.results.json`: parameters, a tidy table and any extra numbers."""
    check_writable_dir("output_dir", output_dir)
    path = Path(output_dir) / f"{notebook}.results.json"
    payload = {
        "notebook": notebook,
        "parameters": _jsonable(parameters),
        "rows": _jsonable(table.to_dict("records")),
        "extra": _jsonable(extra or {}),
    }
    atomic_write_bytes(path, json.dumps(payload, indent=1).encode())
    return path


def load_results(path: str | Path) -> dict:
    payload = json.loads(Path(path).read_text())
    for key in ("notebook", "parameters", "rows"):
        if key not in payload:
            raise ValueError(f"{path} is not a ddcore results file (no '{key}')")
    return payload


def _jsonable(value):
    """Plain JSON values: NaN becomes None, numpy scalars become Python numbers, tuples lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def profile_changes(profile: str, notebook: str, namespace: dict) -> dict:
    """The parameters a profile section sets to other values than this run's, as {name: (now, profile)}.

    What `python -m ddcore.reproduce --profile PROFILE --only NOTEBOOK` would change; a notebook
    prints it so that its text never has to repeat (and contradict) the profile file.
    Call it as profile_changes("gpu", "01_baselines", globals()).
    """
    from ..reproduce import profile_parameters  # here: reproduce imports this module

    wanted = profile_parameters(profile, notebook)
    return {name: (namespace.get(name), value) for name, value in wanted.items() if namespace.get(name) != value}
