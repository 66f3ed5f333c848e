"""The results page: our numbers from long runs beside the published ones, with a verdict each.

Long runs (bench/published_table.py) append one JSON row per evaluated (method, ipc, seed,
iteration) to a rows file; the committed copies live in `runs/`. This module reads them, keeps
the last row of each cell, and writes the README's results section between two markers, so the
page is generated from the files, never typed:

    python -m ddcore.studies.results_page            # rewrite README.md's section from runs/
    python -m ddcore.studies.results_page --check    # exit 1 when README.md is stale (CI's tests do this)

Verdict of a cell with a published number (mean m, std s): "reproduced" when ours is at least
m - (s + 1) points; otherwise "not yet run at the paper's iterations" when we ran fewer
distillation iterations than the paper, else "not reproduced".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from ..published import published
from . import d3_claim
from .robust_claim import claim_table, load_robust_rows, plot_claim

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# Standard deviations of the published numbers (DSA paper, Table 1; FACTS.md lists the means).
PUBLISHED_STD = {"fashion_mnist": {"dc": {1: 0.6, 10: 0.4, 50: 0.4}, "dsa": {1: 0.6, 10: 0.3, 50: 0.2}}}
# Distillation iterations of the papers' runs, per method name used in the rows files.
PAPER_ITERATIONS = {"dc": 1000, "dsa": 1000, "dm": 20000}
CELL = ["dataset", "method", "ipc", "seed", "iteration", "students", "epochs"]
# The cells the Fashion-MNIST issue asks for: shown as "not yet run" until a row exists.
PLANNED = {"fashion_mnist": [("random", 1), ("random", 10), ("dsa", 1), ("dsa", 10), ("dm", 1), ("dm", 10)]}


def load_rows(paths: list[Path]) -> pd.DataFrame:
    """Every row of the given JSONL files, the last one of each cell kept (reruns append)."""
    records = []
    for path in paths:
        records += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not records:
        return pd.DataFrame(columns=CELL + ["accuracies"])
    df = pd.DataFrame(records)
    return df.drop_duplicates(subset=CELL, keep="last").reset_index(drop=True)


def verdict(ours: float, method: str, dataset: str, ipc: int, iterations: int) -> str:
    """Reproduced / not reproduced / not yet run at the paper's iterations, or why none applies."""
    mean = published(dataset).get(method, {}).get(ipc)
    if mean is None:
        return "no published number"
    std = PUBLISHED_STD.get(dataset, {}).get(method, {}).get(ipc)
    if std is None:
        return "no published std"
    if ours >= mean - (std + 1.0):
        return "reproduced"
    paper = PAPER_ITERATIONS.get(method)
    if paper is not None and iterations < paper:
        return f"not yet run at the paper's iterations ({iterations} of {paper})"
    return "not reproduced"


def _command(row) -> str:
    base = f"python bench/published_table.py --dataset {row.dataset} --method {row.method} --ipc {row.ipc}"
    if row.method == "random":
        return base
    partial = getattr(row, "partial", False)
    stopped = " --from-checkpoint" if pd.notna(partial) and bool(partial) else ""
    return f"{base} --iterations {row.final_iteration}{stopped}"


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per evaluated cell, in display order, with our mean +- sd, published and verdict."""
    if rows.empty:
        return pd.DataFrame()
    rows = rows.copy()
    # the run a row came from: its planned iterations (rows of a run stopped early say so)
    planned = rows["run_iterations"] if "run_iterations" in rows else pd.Series(float("nan"), index=rows.index)
    rows["final_iteration"] = planned.fillna(
        rows.groupby(["dataset", "method", "ipc", "seed"]).iteration.transform("max")
    ).astype(int)
    lines = []
    for row in rows.sort_values(["dataset", "ipc", "method", "iteration"]).itertuples():
        accs = pd.Series(row.accuracies) * 100
        mean = published(row.dataset).get(row.method, {}).get(row.ipc)
        std = PUBLISHED_STD.get(row.dataset, {}).get(row.method, {}).get(row.ipc)
        lines.append(
            {
                "data set": row.dataset,
                "method": row.method,
                "IPC": row.ipc,
                "iterations": "-" if row.method == "random" else row.iteration,
                "students x epochs": f"{row.students} x {row.epochs}",
                "ours (%)": f"{accs.mean():.1f} +- {accs.std(ddof=1):.1f}",
                "published (%)": "-" if mean is None else f"{mean}" + ("" if std is None else f" +- {std}"),
                "verdict": verdict(accs.mean(), row.method, row.dataset, row.ipc, row.iteration),
                "command": f"`{_command(row)}`",
            }
        )
    return pd.DataFrame(lines)


def not_yet_run(rows: pd.DataFrame) -> pd.DataFrame:
    """A line for each PLANNED cell that has no row yet."""
    done = set() if rows.empty else set(zip(rows.dataset, rows.method, rows.ipc))
    lines = []
    for dataset, cells in PLANNED.items():
        for method, ipc in cells:
            if (dataset, method, ipc) in done:
                continue
            mean = published(dataset).get(method, {}).get(ipc)
            std = PUBLISHED_STD.get(dataset, {}).get(method, {}).get(ipc)
            lines.append(
                {
                    "data set": dataset,
                    "method": method,
                    "IPC": ipc,
                    "iterations": 0,
                    "students x epochs": "-",
                    "ours (%)": "-",
                    "published (%)": "-" if mean is None else f"{mean}" + ("" if std is None else f" +- {std}"),
                    "verdict": "not yet run",
                    "command": f"`python bench/published_table.py --dataset {dataset} --method {method} --ipc {ipc}`",
                }
            )
    return pd.DataFrame(lines)


def _robust_done(robust: pd.DataFrame, variant: str, width: int, iterations: int) -> int:
    """Seeds of `variant` run at `width` with at least `iterations` iterations."""
    if robust.empty:
        return 0
    g = robust[(robust.variant == variant) & (robust.width == width) & (robust.iterations >= iterations)]
    return int(g.seed.nunique())


def _d3_done(d3: pd.DataFrame, dataset: str, iterations: int) -> int:
    """Seeds of D3 (the authors' rates) run on `dataset` for at least `iterations` iterations."""
    if d3.empty:
        return 0
    g = d3[(d3.method == "d3") & (d3.dataset == dataset) & (d3.d3_iterations >= iterations)]
    return int(g.seed.nunique())


# The seeds' claims at their papers' scale: (claim, setting, seeds done from the rows, why not on this
# CPU, command). The runs above are smaller; these lines say what is still to run, and how.
PAPER_SCALE = [
    (
        "robust: DM+robust (dm+dl) vs DM",
        "rare-subgroup benchmark, ConvNet width 128, IPC 10, 1,000 DM iterations",
        lambda robust, d3: _robust_done(robust, "dm+dl", 128, 1000),
        "width 128 is 15x the FLOPs of width 32 per image (count_flops, 1x28x28; the runs above took 5-10 min per "
        "seed and variant at width 32)",
        "python bench/robust_table.py --ipc 10 --variants dm dm+dl --seeds 0 1 2 --width 128 --dm-iterations 1000",
    ),
    (
        "robust: DC+robust (dc+target) vs DC",
        "the paper's 2,000 DC iterations, IPC 10, width 128",
        lambda robust, d3: _robust_done(robust, "dc+target", 128, 2000),
        "DC at IPC 10 takes about a minute per iteration here at width 32",
        "python bench/robust_table.py --ipc 10 --variants dc dc+target --seeds 0 1 2 --width 128 --dc-iterations 2000",
    ),
    (
        "D3 beats random+soft and DM at equal storage",
        "100 classes sharing one decoder (mnist5k_pairs), budgets 1 and 2, the authors' 8,000 iterations",
        lambda robust, d3: _d3_done(d3, "mnist5k_pairs", 8000),
        "27 s per D3 iteration here: about 60 hours per seed and budget",
        "python bench/d3_table.py --dataset mnist5k_pairs --budgets 1 2 --seeds 0 1 2 --d3-iterations 8000",
    ),
    (
        "D3 subtasks: S groups of classes distilled apart",
        "D3's default settings (notebook 04, gpu profile)",
        lambda robust, d3: 0,  # notebook 04 keeps its numbers in its own results file
        "the cpu profile runs 20 D3 iterations per subtask (its accuracies sit near chance)",
        "python -m ddcore.reproduce --profile gpu --only 04_subtask_decomposition",
    ),
]


def paper_scale_table(robust: pd.DataFrame, d3: pd.DataFrame) -> pd.DataFrame:
    """A line per PAPER_SCALE claim: how many seeds its rows hold at that scale, and the command."""
    lines = []
    for claim, setting, seeds_done, why, command in PAPER_SCALE:
        seeds = seeds_done(robust, d3)
        lines.append(
            {
                "claim": claim,
                "at the paper's scale": setting,
                "status": f"run on {seeds} seed(s)" if seeds else "not yet run",
                "why not on this CPU": why,
                "command": f"`{command}`",
            }
        )
    return pd.DataFrame(lines)


def markdown(body: pd.DataFrame) -> str:
    """A DataFrame as a markdown table."""
    header = "| " + " | ".join(body.columns) + " |\n|" + "---|" * len(body.columns) + "\n"
    return header + "".join("| " + " | ".join(str(v) for v in r) + " |\n" for r in body.itertuples(index=False))


def render(rows: pd.DataFrame, robust_rows: pd.DataFrame | None = None, d3_rows: pd.DataFrame | None = None) -> str:
    """The README section's body (markdown): published comparisons, the robust claim, the D3 claim."""
    body = pd.concat([table(rows), not_yet_run(rows)], ignore_index=True)
    text = "### Full data sets, beside the published numbers\n\n"
    text += "No long run has been recorded yet.\n" if body.empty else markdown(body)
    if robust_rows is not None and not robust_rows.empty:
        text += "\n### Robust distillation: the claim on the rare-subgroup benchmark\n\n" + ROBUST_NOTE
        text += markdown(claim_table(robust_rows))
    if d3_rows is not None and not d3_rows.empty:
        text += "\n### D3: the claim at equal storage\n\n" + D3_NOTE
        text += "\nThe claim, D3 (its longest run on the most seeds) against each baseline on the seeds both have:\n\n"
        text += markdown(d3_claim.claim_table(d3_rows))
        text += "\nEvery method at equal budgets (`IPC-eq. used`: the storage the set actually takes):\n\n"
        text += markdown(d3_claim.storage_table(d3_rows))
        text += "\nD3's learning curve:\n\n" + markdown(d3_claim.curve_table(d3_rows))
    empty = pd.DataFrame()
    scale = paper_scale_table(empty if robust_rows is None else robust_rows, empty if d3_rows is None else d3_rows)
    text += "\n### The seeds' claims at their papers' scale\n\n" + markdown(scale)
    return text


ROBUST_NOTE = (
    "Rows: `bench/robust_table.py` (its docstring defines each variant; `@alpha0.5` / `@k5` mark a swept CVaR "
    "level / number of K-means clusters), mnist5k with 10% of each class inverted, ConvNet-3 width 32, DSA, "
    "128 real images per class, DM (lr 1) and DC for the iterations listed, 300 student epochs; a cell pools "
    "every student of the variant's distillation seeds and compares with its plain method (DM or DC) on the "
    "same seeds (mean, population sd); plain -> robust (difference, noise = sqrt(sd_plain^2 + sd_robust^2)); "
    "'at floor': plain and robust both at or below chance (10%), where no difference means anything; 'rare, "
    "paired by seed': robust minus plain on each distillation seed (the mean of its students; a seed sets both "
    "runs' initial images and batches), free of the seeds' spread that the pooled noise includes; images moved: "
    "mean ||final - initial|| / ||initial||. Claim (graded on the pooled noise): rare subgroup and cluster min up "
    "beyond noise, average down at most 1 point. At IPC 1 the Voronoi cells of dm+dl and dc+target are one cell "
    "per class (one image each), where their risk is a single CVaR near the mean: K-means clusters (dm+cm, dc+km) are "
    "the robust variants that can act there. At IPC 10 dc+target's matching loss stays near its start "
    "(10-iteration means of 310-335 against plain DC's 127 -> 102-110): its target, redrawn every outer step, "
    "moves 3.9x as far as plain DC's between two real batches of a class (`bench/dc_target_noise.py`: 7.39 "
    "against 1.90 per class), because the max term gives half the weight to the tail of one Voronoi cell "
    "(about 13 of the 128 images); over K-means k=3 clusters of the pixels (dc+km) it moves 4.23 and the loss "
    "goes down (520 -> 456). "
    "Figures: `figures/robust_<benchmark>_w32_ipc<IPC>_claim.png`.\n\n"
)
D3_NOTE = (
    "Rows: `bench/d3_table.py` (command in each row's `settings`), ConvNet-3 width 32 students, 300 epochs, "
    "final-epoch accuracy, mean +- sd (population) over all students of the seeds. D3 is the authors' "
    "objective (trajectory matching + MMD as two optimizer steps, their learning rates, latent 64, 24 decoded "
    "images per class in the MMD against 32 real), with the widest decoder that fits the budget; experts: 3 "
    "per seed x 8 epochs (start epoch <= 4, 2 epochs ahead), labeller: 20 epochs on the training set; DM 300 "
    "iterations, MTT as listed. `random+soft` and D3 take their soft labels from the same labeller; `d3+hard` "
    "is the same D3 set with its priors' classes; `label mismatch`: the share of priors whose soft label's "
    "argmax is not their class. `mnist5k_pairs`: 100 classes (two mnist5k digits side by side, 100 training "
    "images per class), the task where many classes share one decoder. Verdict: supported when D3 is better "
    "than both random+soft and DM beyond noise; a D3 that ran fewer than the authors' 8,000 iterations is 'not "
    "shown'. `d3@lr_prior0.01,lr_decoder0.001`: D3 at 10x the authors' rates, which this CPU can run far "
    "enough to show that the implementation learns; never counted in the claim. Figures: "
    "`figures/d3_<data set>_w32_storage.png`.\n"
)


def load_losses(path: Path) -> pd.DataFrame:
    """A run's loss curve (iteration, loss, seconds), the last entry of each iteration kept."""
    df = pd.DataFrame([json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()])
    return df.drop_duplicates("iteration", keep="last").sort_values("iteration")


def plot_runs(rows: pd.DataFrame, dataset: str, losses: dict[str, pd.DataFrame]):
    """Accuracy against distillation iterations per IPC (published marks, our random subset as a
    line), and the distillation loss curves (smoothed) to show whether they flattened."""
    import matplotlib.pyplot as plt

    rows = rows[rows.dataset == dataset]
    ipcs = sorted(rows.ipc.unique())
    fig, axes = plt.subplots(1, len(ipcs) + 1, figsize=(4.2 * (len(ipcs) + 1), 3.6))
    for ax, ipc in zip(axes, ipcs):
        _accuracy_panel(ax, rows[rows.ipc == ipc], dataset, ipc)
    ax = axes[-1]
    for name, curve in losses.items():
        smooth = curve.loss.rolling(25, min_periods=1).mean()
        ax.plot(curve.iteration, smooth / smooth.iloc[0], label=name.replace(f"{dataset}_", ""))
    ax.set(
        xlabel="distillation iteration",
        ylabel="loss / first loss (25-it. mean)",
        yscale="log",
        title="distillation loss",
    )
    ax.legend(fontsize=7)
    fig.suptitle(f"{dataset}: ConvNet-3 width 128, final-epoch accuracy of fresh students", fontsize=10)
    fig.tight_layout()
    return fig


def _accuracy_panel(ax, rows: pd.DataFrame, dataset: str, ipc: int) -> None:
    for method, group in rows[rows.method != "random"].groupby("method"):
        group = group.sort_values("iteration")
        means = [100 * pd.Series(a).mean() for a in group.accuracies]
        sds = [100 * pd.Series(a).std(ddof=1) for a in group.accuracies]
        ax.errorbar(group.iteration, means, yerr=sds, marker="o", capsize=3, label=f"{method} (ours)")
    for accs in rows[rows.method == "random"].accuracies:
        ax.axhline(100 * pd.Series(accs).mean(), color="grey", ls="--", label="random real (ours)")
    for method, points in published(dataset).items():
        if ipc in points:
            ax.axhline(points[ipc], ls=":", color="C3" if method == "dsa" else "C4", label=f"{method} (published)")
    distilled = (rows.method != "random").any()
    ax.set(
        xlabel="distillation iterations",
        ylabel="test accuracy (%)",
        title=f"IPC {ipc}" + ("" if distilled else ": only the random subset run so far"),
    )
    ax.legend(fontsize=7)


def replace_section(text: str, section: str) -> str:
    """text with the part between BEGIN and END replaced by section; both markers must exist."""
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise ValueError(f"README.md needs the markers {BEGIN} and {END}, in that order")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{section}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddcore.studies.results_page", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's section is stale")
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text()
    rows = load_rows(sorted(RUNS.glob("*_published.rows.jsonl")))
    robust_rows = load_robust_rows(sorted(RUNS.glob("robust_*.rows.jsonl")))
    d3_rows = d3_claim.load_d3_rows(sorted(RUNS.glob("d3_*.rows.jsonl")))
    new = replace_section(text, render(rows, robust_rows, d3_rows))
    if args.check:
        if new != text:
            print("README.md's results section is stale: run python -m ddcore.studies.results_page", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    for dataset in sorted(rows.dataset.unique()) if not rows.empty else []:
        fig = plot_runs(
            rows,
            dataset,
            {p.name.removesuffix(".loss.jsonl"): load_losses(p) for p in sorted(RUNS.glob(f"{dataset}_*.loss.jsonl"))},
        )
        fig.savefig(ROOT / "figures" / f"published_{dataset}_w128_runs.png", dpi=110, bbox_inches="tight")
    groups = robust_rows.groupby(["benchmark", "width", "ipc"]) if not robust_rows.empty else []
    for (bench, width, ipc), g in groups:
        name = f"robust_{bench}_w{width}_ipc{ipc}_claim.png"  # the scale in the name
        plot_claim(g, int(ipc)).savefig(ROOT / "figures" / name, dpi=110, bbox_inches="tight")
    for dataset in sorted(d3_rows.dataset.unique()) if not d3_rows.empty else []:
        fig = d3_claim.plot_d3(d3_rows, dataset)
        fig.savefig(ROOT / "figures" / f"d3_{dataset}_w32_storage.png", dpi=110, bbox_inches="tight")
    return 0


if __name__ == "__main__":
    sys.exit(main())
