"""Side by side: a robust iteration against its plain method's, in one process, alternating (the
robust issue's item 6 and the performance issue's item 3: at most 1.5x). Run by hand, never in CI:

    python bench/ab_robust_cost.py --methods dm d3 --ipcs 1 10 --rounds 3 [--width 128] [--threads 1]

bench/run.py times each workload once, in its own process, one after another: when other
processes start or stop between the plain row and the robust row, their ratio measures the load,
not the method. Here each round runs the plain workload and then the robust one (bench/run.py's
workloads and settings: RobustConfig() defaults, width 128, 256 real images per class, DSA, D3 with
MTT matching and its defaults) for --iterations iterations each after a warm-up, so load from
other processes hits both alike. Prints per (method, IPC): the median seconds per iteration of each
over all rounds, their ratio, and the ratio of every round (its spread is the noise).
DC is left to bench/run.py: one of its iterations at IPC 10 takes minutes here.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import sys
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).with_name("run.py"))
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_run"] = bench  # dataclasses look their module up while the file runs
_spec.loader.exec_module(bench)

METHODS = ("dm", "d3")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--ipcs", nargs="+", type=int, default=[1, 10])
    p.add_argument("--shape", choices=list(bench.SHAPES), default="mnist5k")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=3, help="timed iterations of each variant per round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/bench_ab_robust", help="folder of the data and the experts")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = bench.Settings(
        methods=tuple(args.methods), shapes=(args.shape,), ipcs=tuple(args.ipcs), width=args.width, tables=("main",)
    )
    pairs = []
    for w in bench.build_plan(settings):
        if w.method in args.methods:
            w = dataclasses.replace(w, warmup=1, repeats=args.iterations)
            pairs.append((w, dataclasses.replace(w, method=f"{w.method}+robust")))
    paths, experts_dir = bench.prepare(settings, [w for pair in pairs for w in pair], Path(args.out))
    data = bench.load_data(paths[args.shape])
    device = torch.device("cpu")
    print(
        f"{bench.device_label('cpu')}, {args.threads} thread(s), torch {torch.__version__}; {args.shape}, "
        f"width {args.width}, {args.rounds} rounds of plain then robust, {args.iterations} timed iterations each"
    )
    print(f"{'method':<6} {'ipc':>3} {'plain s/it':>11} {'robust s/it':>12} {'robust/plain':>13}  per round")
    for plain, robust in pairs:
        times = {"plain": [], "robust": []}
        rounds = []
        for _ in range(args.rounds):
            a = bench.time_distill(plain, data, device, str(experts_dir))
            b = bench.time_distill(robust, data, device, str(experts_dir))
            times["plain"] += a
            times["robust"] += b
            rounds.append(statistics.median(b) / statistics.median(a))
        med_a, med_b = statistics.median(times["plain"]), statistics.median(times["robust"])
        print(
            f"{plain.method:<6} {plain.ipc:>3} {med_a:>11.3f} {med_b:>12.3f} {med_b / med_a:>13.2f}  "
            + " ".join(f"{r:.2f}" for r in rounds),
            flush=True,
        )


if __name__ == "__main__":
    main()
