"""Side by side: the ConvNet's fused first block (models.conv_instance_norm) with the norm's shift
as a ones row of the batched matmul (now) against baddbmm(shift, ...) (before), on the CPU (the
performance issue's item 4). Run by hand on a quiet machine, never in CI:

    python bench/ab_first_block.py [--rounds 3] [--threads 2] [--repeats 5]

Why: bench/epoch_profile.py found baddbmm's copy of the broadcast shift into the output and its
backward's sum over H W at about 4% of a student's epoch (IPC 50).

Workloads, each with both variants, alternating within every round (one process):
- block 1: conv_instance_norm forward + backward at (256, 1, 28, 28) -> (256, 128, 32 x 32), the
  images requiring a gradient (as distillation's do);
- eval ipc 10 / 50: one student's training epoch (TrainConfig() defaults, DSA, mnist5k, ConvNet-3
  width 128);
- mtt ipc 10: one MTT iteration (MTTConfig() defaults, a 4-epoch width-128 expert).
Each figure is the median of `repeats` after a warm-up; the summary gives the median over rounds
and the speed-up (baddbmm / ones row: above 1, the ones row is faster).
"""

from __future__ import annotations

import tempfile
from functools import partial

import torch
from abtiming import ab_parser, alternate, median_seconds, mtt_iteration, print_summary, student_epoch

import ddcore.models
from ddcore.data import load_dataset
from ddcore.models import instance_norm_affine


def baddbmm_first_block(x, conv, norm):
    """The previous tree's conv_instance_norm."""
    patches, w_img, shift = instance_norm_affine(x, conv, norm)
    return torch.baddbmm(shift, w_img, patches)


VARIANTS = {"baddbmm": baddbmm_first_block, "ones row": ddcore.models.conv_instance_norm}


def block_seconds(repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    net = ddcore.models.ConvNet(1, 10, (28, 28), width=128)
    conv, norm = net.features[0], net.features[1]
    x = torch.randn(256, 1, 28, 28, generator=gen, requires_grad=True)
    grad = torch.randn(256, 128, 32 * 32, generator=gen)

    def step():
        ddcore.models.conv_instance_norm(x, conv, norm).backward(grad)
        x.grad = None
        net.zero_grad(set_to_none=True)

    return median_seconds(step, repeats)


def main() -> None:
    args = ab_parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    with tempfile.TemporaryDirectory() as expert_dir:
        workloads = {
            "block 1": lambda _: block_seconds(2 * args.repeats),
            "eval ipc 10": lambda _: median_seconds(student_epoch(data, 10), args.repeats),
            "eval ipc 50": lambda _: median_seconds(student_epoch(data, 50), args.repeats),
            "mtt ipc 10": lambda _: mtt_iteration(data, expert_dir, args.repeats),
        }
        # ConvNet.embed looks conv_instance_norm up at each call
        results = alternate(workloads, VARIANTS, args.rounds, partial(setattr, ddcore.models, "conv_instance_norm"))
    ddcore.models.conv_instance_norm = VARIANTS["ones row"]
    header = f"{args.threads} threads, {args.rounds} rounds, median of {args.repeats} after a warm-up"
    print_summary(results, tuple(VARIANTS), header)


if __name__ == "__main__":
    main()
