"""Side by side: the CPU hot paths of this checkout's ddcore against an older tree's, each in its
own process, alternating (the performance issue's item 4: "side by side in one run against the
previous tree"). Run by hand on a quiet machine, never in CI:

    git archive REV ddcore | tar -x -C /tmp/old      # the older tree
    python bench/ab_trees.py --old /tmp/old [--rounds 3] [--threads 2] [--repeats 5]

Workloads (mnist5k, ConvNet-3 width 128, DSA), each a fresh process per tree and round:
- eval ipc 10 / 50: one student's training epoch (TrainConfig() defaults), as evaluation trains it;
- dm ipc 10: one DM iteration (256 real images per class);
- dc ipc 10: one DC iteration capped at 2 outer steps (the reference's 50 inner epochs between them),
  as bench/run.py times it;
- mtt ipc 10: one MTT iteration (MTTConfig() defaults, a 4-epoch width-128 expert, trained once into
  a shared folder so that neither tree's process pays for it).
A workload's figure is the median of `repeats` iterations after a warm-up (2 for dc); the summary
gives the median over rounds and the speed-up (old / new: above 1, this checkout is faster).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = ("eval ipc 10", "eval ipc 50", "dm ipc 10", "dc ipc 10", "mtt ipc 10")


def worker(a: dict) -> float:
    """Seconds of one workload, run with the ddcore package in a['tree']."""
    sys.path.insert(0, a["tree"])
    import torch
    from abtiming import iteration_seconds, median_seconds, mtt_iteration, student_epoch

    import ddcore
    from ddcore.data import load_dataset
    from ddcore.models import ModelConfig

    assert Path(ddcore.__file__).resolve().is_relative_to(Path(a["tree"]).resolve()), ddcore.__file__
    torch.set_num_threads(a["threads"])
    data, work, repeats = load_dataset("mnist5k"), a["work"], a["repeats"]
    if work.startswith("eval"):
        return median_seconds(student_epoch(data, int(work.split()[-1])), repeats)
    if work.startswith("mtt"):
        return mtt_iteration(data, a["experts"], repeats)
    options = dict(batch_real=256, model=ModelConfig(width=128), dsa=True)
    if work.startswith("dc"):
        options.update(outer_loop=2, inner_loop=50)
        repeats = 2
    return iteration_seconds(work.split()[0], data, 10, repeats, **options)


def timed(tree: str, work: str, args, experts: str) -> float:
    payload = dict(tree=tree, work=work, threads=args.threads, repeats=args.repeats, experts=experts)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(payload)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from abtiming import ab_parser, alternate, print_summary

    p = ab_parser(__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="folder holding the older ddcore package")
    p.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    args = p.parse_args()
    if not (Path(args.old) / "ddcore" / "__init__.py").exists():
        raise SystemExit(f"--old: {args.old} holds no ddcore package (expected {args.old}/ddcore/__init__.py)")
    trees = {"old": str(Path(args.old).resolve()), "new": str(HERE.parent)}
    with tempfile.TemporaryDirectory() as experts:
        workloads = {work: (lambda tree, work=work: timed(tree, work, args, experts)) for work in args.only}
        results = alternate(workloads, trees, args.rounds)
    header = f"{args.threads} threads, {args.rounds} rounds, median of {args.repeats} after a warm-up (dc: 2)"
    print_summary(results, tuple(trees), header)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(worker(json.loads(sys.argv[2])))
    else:
        main()
