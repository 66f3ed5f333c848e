"""Run the notebooks with papermill under a profile and collect their results.

    python -m ddcore.reproduce [--profile cpu|gpu] [--only NAME ...] [--keep-going]

Each notebook is executed into results/<profile>/<name>.ipynb with the profile's parameters;
its results file lands beside it, and every results file is gathered into
results/<profile>/summary.csv. A failing notebook stops the run with an error naming the
notebook and the cell, unless --keep-going is given.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from .checks import check_choice, check_writable_dir
from .report import load_results

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
        raise ValueError(f"profile {profile} names unknown notebooks {sorted(unknown)}; "
                         f"notebooks are {available_notebooks()}")
    base = profile_parameters(spec["extends"], notebook, _seen + (profile,)) if "extends" in spec else {}
    return {**base, **(spec.get("all") or {}), **(spec.get(notebook) or {})}


def run_notebook(name: str, profile: str, out_dir: Path, progress: bool = True) -> Outcome:
    """Execute one notebook with papermill; raise NotebookFailed naming the failing cell."""
    import papermill as pm

    check_choice("notebook", name, available_notebooks())
    params = {**profile_parameters(profile, name), "output_dir": str(out_dir),
              "figures_dir": str(out_dir / "figures")}
    output = out_dir / f"{name}.ipynb"
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(output), parameters=params,
                            cwd=str(NOTEBOOKS), progress_bar=progress, kernel_name="python3")
    except pm.PapermillExecutionError as err:
        raise NotebookFailed(f"notebook {name} failed in cell In [{err.exec_count}] ({err.ename}: {err.evalue}); "
                             f"its partial output is {output}") from None
    return Outcome(name, True, time.perf_counter() - start, output)


def summarize_results(out_dir: Path, outcomes: list[Outcome]) -> pd.DataFrame:
    """One table of every notebook's result rows, plus a status table of the run."""
    frames = []
    for o in outcomes:
        path = out_dir / f"{o.name}.results.json"
        if o.ok and path.exists():
            frames.append(pd.DataFrame(load_results(path)["rows"]).assign(notebook=o.name))
    summary = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["notebook"])
    summary.to_csv(out_dir / "summary.csv", index=False)
    status = pd.DataFrame([{"notebook": o.name, "ok": o.ok, "seconds": round(o.seconds, 1),
                            "output": str(o.output), "error": o.error} for o in outcomes])
    status.to_csv(out_dir / "status.csv", index=False)
    return summary


def reproduce(profile: str = "cpu", only: list[str] | None = None, keep_going: bool = False,
              results_root: Path | str = ROOT / "results", progress: bool = True) -> list[Outcome]:
    check_choice("profile", profile, available_profiles())
    names = only or available_notebooks()
    for name in names:
        check_choice("notebook", name, available_notebooks())
    out_dir = Path(results_root).resolve() / profile
    check_writable_dir("results_root", out_dir)
    outcomes = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} (profile {profile})", flush=True)
        try:
            outcomes.append(run_notebook(name, profile, out_dir, progress))
        except NotebookFailed as err:
            outcomes.append(Outcome(name, False, 0.0, out_dir / f"{name}.ipynb", str(err)))
            if not keep_going:
                summarize_results(out_dir, outcomes)
                raise
            print(f"  FAILED: {err}", file=sys.stderr, flush=True)
    summary = summarize_results(out_dir, outcomes)
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
    args = parser.parse_args(argv)
    try:
        reproduce(args.profile, args.only, args.keep_going, args.results)
    except (NotebookFailed, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
