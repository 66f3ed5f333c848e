"""Side by side: the CPU hot paths with the network and images in channels_last memory format
against the default NCHW (the performance issue's item 4). Run by hand on a quiet machine, never
in CI:

    python bench/ab_channels_last.py [--rounds 3] [--threads 2] [--repeats 5]

Why: bench/conv_rate.py measured the ConvNet's 128 -> 128 3x3 convolutions (forward + backward)
at 0.71 / 0.87 of the matmul rate in NCHW and 0.91 / 0.99 in channels_last (16x16 / 8x8), so
the epoch might gain from channels_last if the norms, pools and DSA do not lose it again.

Workloads, each in both formats, alternating within every round so that load from other
processes hits both alike (one process; nothing here is set at import):
- eval ipc 10 / 50: train_network for 1 epoch (TrainConfig() defaults, DSA) on ipc real mnist5k
  images per class, ConvNet-3 width 128, as evaluation trains a student (train_student converts
  the same way under EvalConfig(accel=AccelConfig(channels_last=True)));
- mtt ipc 10: one MTT iteration (MTTConfig() defaults, one 4-epoch expert, width 128) with
  accel=AccelConfig(channels_last=True), i.e. distill's own option.
Each figure is the median of `repeats` after a warm-up; a round prints NCHW / channels_last
seconds; the summary gives the median over rounds and the speed-up (NCHW / channels_last).
"""

from __future__ import annotations

import tempfile
from functools import partial

import torch
from abtiming import ab_parser, alternate, median_seconds, mtt_iteration, print_summary, student_epoch

from ddcore.accel import AccelConfig, to_memory_format
from ddcore.data import load_dataset

FORMATS = {"NCHW": None, "channels_last": AccelConfig(channels_last=True)}


def eval_epoch_seconds(data, ipc: int, accel, repeats: int) -> float:
    convert = partial(to_memory_format, accel=accel)
    return median_seconds(student_epoch(data, ipc, convert, convert), repeats)


def main() -> None:
    args = ab_parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    with tempfile.TemporaryDirectory() as expert_dir:
        workloads = {  # name -> seconds of one variant, given its accel
            "eval ipc 10": lambda accel: eval_epoch_seconds(data, 10, accel, args.repeats),
            "eval ipc 50": lambda accel: eval_epoch_seconds(data, 50, accel, args.repeats),
            "mtt ipc 10": lambda accel: mtt_iteration(data, expert_dir, args.repeats, accel),
        }
        results = alternate(workloads, FORMATS, args.rounds)
    header = f"{args.threads} threads, {args.rounds} rounds, median of {args.repeats} after a warm-up"
    print_summary(results, tuple(FORMATS), header)


if __name__ == "__main__":
    main()
