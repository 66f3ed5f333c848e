"""Side by side: the ConvNet's 2x2 average pool as torch's avg_pool2d against avg_pool_2x2's
matmul (ddcore.models.POOL_AS_MATMUL), on the CPU (the performance issue's item 4). Run by hand
on a quiet machine, never in CI:

    python bench/ab_pool.py [--rounds 3] [--threads 2] [--repeats 5]

Why: bench/epoch_profile.py found avg_pool2d forward, backward and the backward's zero fill at
21% of a student's epoch (IPC 50), at about a fifth of the copy bandwidth.

Workloads, each with both variants, alternating within every round so that load from other
processes hits both alike (one process):
- pool 32 / 16 / 8: the pool alone, forward + backward, at (256, 128, size, size) (the ConvNet's
  three blocks at a 256 batch);
- eval ipc 10 / 50: one student's training epoch (TrainConfig() defaults, DSA, mnist5k,
  ConvNet-3 width 128), as evaluation trains it;
- mtt ipc 10: one MTT iteration (MTTConfig() defaults, a 4-epoch width-128 expert): the unrolled
  steps with their double backward.
Each figure is the median of `repeats` after a warm-up; the summary gives the median over rounds
and the speed-up (avg_pool2d / matmul: above 1, the matmul is faster).
"""

from __future__ import annotations

import tempfile

import torch
from abtiming import ab_parser, alternate, median_seconds, mtt_iteration, print_summary, student_epoch

import ddcore.models
from ddcore.data import load_dataset

VARIANTS = {"avg_pool2d": False, "matmul": True}


def pool_seconds(size: int, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 128, size, size, generator=gen, requires_grad=True)
    grad = torch.randn(256, 128, size // 2, size // 2, generator=gen)
    pool = ddcore.models.AvgPool2x2()

    def step():
        pool(x).backward(grad)
        x.grad = None

    return median_seconds(step, repeats)


def main() -> None:
    args = ab_parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    with tempfile.TemporaryDirectory() as expert_dir:
        workloads = {
            **{f"pool {s}": (lambda _, s=s: pool_seconds(s, 2 * args.repeats)) for s in (32, 16, 8)},
            "eval ipc 10": lambda _: median_seconds(student_epoch(data, 10), args.repeats),
            "eval ipc 50": lambda _: median_seconds(student_epoch(data, 50), args.repeats),
            "mtt ipc 10": lambda _: mtt_iteration(data, expert_dir, args.repeats),
        }
        results = alternate(workloads, VARIANTS, args.rounds, lambda on: setattr(ddcore.models, "POOL_AS_MATMUL", on))
    ddcore.models.POOL_AS_MATMUL = True
    header = f"{args.threads} threads, {args.rounds} rounds, median of {args.repeats} after a warm-up"
    print_summary(results, tuple(VARIANTS), header)


if __name__ == "__main__":
    main()
