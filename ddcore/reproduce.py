"""Run the notebooks with papermill under a profile and collect their results.

    python -m ddcore.reproduce [--profile cpu|gpu] [--only NAME ...] [--keep-going] [-p NAME VALUE ...]
    python -m ddcore.reproduce --in-place [--only NAME ...]    # what `make notebooks` runs

Each notebook is executed into results/<profile>/<name>.ipynb with the profile's parameters;
its results file lands beside it, and every results file is gathered into
results/<profile>/summary.csv. A failing notebook stops the run with an error naming the
notebook and the cell, unless --keep-going is given. `-p NAME VALUE` sets a parameter on top of
the profile (VALUE read as YAML, as papermill's -y: `-p iterations 500`, `-p subtasks "[1, 2]"`);
every notebook run must have that parameter.

`--in-place` executes the committed notebooks with their own defaults (no profile) back into
notebooks/, their figures into the tracked figures/: the outputs readers and nbval see then come
from the committed code. Every other run writes figures under results/ and leaves figures/ alone.
Each notebook executed in place is stamped (metadata "ddcore": {"executed_code": digest}) with a
digest of its code cells, so a test fails when a code cell is edited without executing it again
(`source_digest`, `stale_notebooks`), and with the numbers its conclusion quotes, which nbval
compares with a fresh run's within the students' noise (`ddcore.studies.quoted`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pandas as pd
import yaml

from .checks import check_choice, check_writable_dir
from .studies.quoted import RECORD_ENV
from .studies.report import load_results

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PROFILES = ROOT / "profiles"


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names it, the cell and where its partial output is."""


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    output: Path
    error: str = ""


def available_notebooks() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def profile_parameters(profile: str, notebook: str, _seen: tuple[str, ...] = ()) -> dict:
    """The profile's `all` section merged with the notebook's own section.

    A profile with `extends: OTHER` starts from OTHER's parameters for the notebook, then applies
    its own `all` and notebook sections (e.g. gpu_fashion_mnist = gpu on another data set).
    """
    check_choice("profile", profile, available_profiles())
    if profile in _seen:
        raise ValueError(f"profiles extend each other in a loop: {' -> '.join(_seen + (profile,))}")
    spec = yaml.safe_load((PROFILES / f"{profile}.yaml").read_text()) or {}
    unknown = set(spec) - {"all", "extends"} - set(available_notebooks())
    if unknown:
        raise ValueError(
            f"profile {profile} names unknown notebooks {sorted(unknown)}; notebooks are {available_notebooks()}"
        )
    base = profile_parameters(spec["extends"], notebook, _seen + (profile,)) if "extends" in spec else {}
    return {**base, **(spec.get("all") or {}), **(spec.get(notebook) or {})}


def ipc_kernel_manager():
    """A kernel manager class whose kernels talk over local IPC sockets instead of TCP.

    Over TCP without CurveZMQ keys, every kernel start logs "Kernel is running over TCP without
    encryption" into the run's output; local IPC sockets are not reachable from the network, so
    the warning does not apply and is not printed. Imported here: jupyter_client is slow to import.
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

    return IPCKernelManager


def source_digest(nb: dict) -> str:
    """sha256 of a notebook's code cells (their sources, in order): what executing it depends on
    besides the library. Outputs, metadata and markdown are left out."""
    code = [c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in nb["cells"]]
    kinds = [c["cell_type"] for c in nb["cells"]]
    payload = json.dumps([src for src, kind in zip(code, kinds) if kind == "code"])
    return hashlib.sha256(payload.encode()).hexdigest()


def stamp(path: Path, quoted: Path | None = None) -> None:
    """Record in the notebook at `path` the digest of the code its outputs came from, and the numbers
    its conclusion quotes when the run wrote them to `quoted` (studies.quoted.check_quoted)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata["ddcore"] = {"executed_code": source_digest(nb)}
    if quoted is not None and quoted.exists():
        nb.metadata["ddcore"]["quoted"] = json.loads(quoted.read_text())
    nbformat.write(nb, path)


def stale_notebooks(folder: Path = NOTEBOOKS) -> list[str]:
    """Notebooks whose code cells differ from the ones their saved outputs were executed from
    (or that carry no stamp): `make notebooks` (or --in-place --only NAME) makes them current."""
    stale = []
    for path in sorted(folder.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        if nb.get("metadata", {}).get("ddcore", {}).get("executed_code") != source_digest(nb):
            stale.append(path.stem)
    return stale


def parse_overrides(pairs: list[tuple[str, str]] | None) -> dict:
    """-p NAME VALUE pairs -> {name: value}, each VALUE read as YAML ("500" -> 500, "[1, 2]" -> a list)."""
    overrides = {}
    for name, text in pairs or []:
        try:
            overrides[name] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"-p {name} {text!r}: the value is not valid YAML ({err.problem})") from None
    return overrides


def check_overrides(name: str, overrides: dict) -> None:
    """Raise unless notebook `name` has every overridden parameter (papermill would add it unseen)."""
    import papermill as pm

    known = pm.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"notebook {name} has no parameter {unknown}; its parameters are {sorted(known)}")


def run_notebook(
    name: str, profile: str | None, out_dir: Path, progress: bool = True, overrides: dict | None = None
) -> Outcome:
    """Execute one notebook with papermill; raise NotebookFailed naming the failing cell.

    profile=None: in place, with the notebook's defaults (figures into results/figures), then
    the figures it made are copied into the tracked figures/. overrides: parameters set on top of
    the profile, as reproduce has checked them (never in place: the committed outputs are the defaults' run).
    """
    import papermill as pm

    check_choice("notebook", name, available_notebooks())
    output = out_dir / f"{name}.ipynb"
    if profile is None:  # no parameters: papermill injects no cell, the committed code runs as it is
        params = {}
    else:  # overrides were checked against the notebook by reproduce, before any notebook ran
        params = {
            **profile_parameters(profile, name),
            **(overrides or {}),
            "output_dir": str(out_dir),
            "figures_dir": str(out_dir / "figures"),
        }
    start, started = time.perf_counter(), time.time()
    quoted = out_dir / f"{name}.quoted.json"
    quoted.unlink(missing_ok=True)
    # In place, the kernel (which inherits this environment) records its conclusion's numbers there.
    record = {RECORD_ENV: str(quoted)} if profile is None else {}
    try:
        with mock.patch.dict(os.environ, record):  # restores the environment afterwards
            pm.execute_notebook(
                str(NOTEBOOKS / f"{name}.ipynb"),
                str(output),
                parameters=params,
                cwd=str(NOTEBOOKS),
                progress_bar=progress,
                kernel_name="python3",
                kernel_manager_class=ipc_kernel_manager(),
            )
    except pm.PapermillExecutionError as err:
        raise NotebookFailed(
            f"notebook {name} failed in cell In [{err.exec_count}] ({err.ename}: {err.evalue}); "
            f"its partial output is {output}"
        ) from None
    if profile is None:  # only a run that finished replaces the committed notebook
        stamp(output, quoted)
        shutil.copy2(output, NOTEBOOKS / f"{name}.ipynb")
        publish_figures(ROOT / "results" / "figures", ROOT / "figures", since=started)
    return Outcome(name, True, time.perf_counter() - start, output)


def publish_figures(source: Path, target: Path, since: float) -> list[Path]:
    """Copy the figures (PNG and their JSON sidecars) written in `source` after `since` to `target`."""
    copied = []
    for path in sorted(source.glob("*")) if source.is_dir() else []:
        if path.suffix in (".png", ".json") and path.stat().st_mtime >= since:
            copied.append(Path(shutil.copy2(path, target / path.name)))
    return copied


def summarize_results(out_dir: Path, outcomes: list[Outcome], results_dir: Path | None = None) -> pd.DataFrame:
    """One table of every notebook's result rows, plus a status table of the run, into out_dir.

    results_dir: where the notebooks wrote their results files (default out_dir; an in-place run
    leaves them where the notebooks' own `output_dir` default puts them, results/notebooks)."""
    frames = []
    for o in outcomes:
        path = (results_dir or out_dir) / f"{o.name}.results.json"
        if o.ok and path.exists():
            frames.append(pd.DataFrame(load_results(path)["rows"]).assign(notebook=o.name))
    summary = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["notebook"])
    summary.to_csv(out_dir / "summary.csv", index=False)
    status = pd.DataFrame(
        [
            {"notebook": o.name, "ok": o.ok, "seconds": round(o.seconds, 1), "output": str(o.output), "error": o.error}
            for o in outcomes
        ]
    )
    status.to_csv(out_dir / "status.csv", index=False)
    return summary


def reproduce(
    profile: str | None = "cpu",
    only: list[str] | None = None,
    keep_going: bool = False,
    results_root: Path | str = ROOT / "results",
    progress: bool = True,
    overrides: dict | None = None,
) -> list[Outcome]:
    """Run the notebooks under a profile (None: in place, see the module's docstring), with
    `overrides` ({name: value}) set on top of the profile in every notebook."""
    if profile is not None:
        check_choice("profile", profile, available_profiles())
    elif overrides:
        raise ValueError("in place, notebooks run with their own defaults: -p is not allowed with --in-place")
    names = only or available_notebooks()
    for name in names:
        check_choice("notebook", name, available_notebooks())
        if overrides:
            check_overrides(name, overrides)  # before any notebook runs
    out_dir = Path(results_root).resolve() / (profile or "in_place")
    check_writable_dir("results_root", out_dir)
    # in place, the notebooks write results where their own output_dir default says
    results_dir = (NOTEBOOKS / ".." / "results" / "notebooks").resolve() if profile is None else None
    outcomes = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ({f'profile {profile}' if profile else 'in place'})", flush=True)
        try:
            outcomes.append(run_notebook(name, profile, out_dir, progress, overrides))
        except NotebookFailed as err:
            outcomes.append(Outcome(name, False, 0.0, out_dir / f"{name}.ipynb", str(err)))
            if not keep_going:
                summarize_results(out_dir, outcomes, results_dir)
                raise
            print(f"  FAILED: {err}", file=sys.stderr, flush=True)
    summary = summarize_results(out_dir, outcomes, results_dir)
    print(f"summary: {out_dir / 'summary.csv'} ({len(summary)} rows)")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise NotebookFailed("; ".join(o.error for o in failed))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddcore.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu", help=f"one of {available_profiles()}")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"some of {available_notebooks()}")
    parser.add_argument("--keep-going", action="store_true", help="run the other notebooks when one fails")
    parser.add_argument("--results", default=str(ROOT / "results"), help="results root folder")
    parser.add_argument(
        "--in-place",
        action="store_true",
        help="execute the committed notebooks with their defaults into notebooks/ and figures/",
    )
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="set a notebook parameter on top of the profile; VALUE is read as YAML (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.parameter)
        reproduce(
            None if args.in_place else args.profile,
            args.only,
            args.keep_going,
            args.results,
            overrides=overrides,
        )
    except (NotebookFailed, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
