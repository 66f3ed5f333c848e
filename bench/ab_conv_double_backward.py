"""Side by side: the ConvNet's 3x3 convolutions as stock nn.Conv2d against ddcore.conv's
conv3x3 (a backward of first-order convolutions, so that the second derivative of gradient and
trajectory matching never convolves transposed views), on the CPU (the performance issue's item 4).
Run by hand on a quiet machine, never in CI:

    python bench/ab_conv_double_backward.py [--rounds 3] [--threads 2] [--repeats 3] [--workloads NAME ...]

Why: timing every aten call of an MTT iteration (ConvNet-3 width 128, 100 images, 2 unrolled
steps) showed the double backward's weight-gradient convolutions on (128, 100, 16, 16) transposed
views at 2-2.5x the time of the forward convolution of the same size.

Workloads, each with both variants (ddcore.conv.TWICE_DIFFERENTIABLE False / True), alternating
within every round so that load from other processes hits both alike (one process):
- 2nd deriv 16 / 8: the op alone, (100, 128, s, s) input, 128 -> 128 channels: the input and
  weight gradients of a tanh loss with create_graph=True (a middle layer passes its input gradient
  down to the layer below), then the gradient of their squared norms w.r.t. the input and the
  weight (what matching does);
- eval ipc 10 / 50: one student's training epoch (TrainConfig() defaults, DSA, mnist5k,
  ConvNet-3 width 128): first-order only, where conv3x3 must not cost more;
- dc ipc 10: one DC iteration of 2 outer steps with the reference's inner loop (DCConfig()
  defaults, DSA);
- mtt ipc 10: one MTT iteration (MTTConfig() defaults, a 4-epoch width-128 expert);
- d3 ipc 10: one D3 iteration (D3Config() defaults, hard labels) matching the same expert.
--workloads "d3 ipc 10" ... times a subset.
Each figure is the median of `repeats` after a warm-up; the summary gives the median over rounds
and the speed-up (stock / conv3x3: above 1, conv3x3 is faster).
"""

from __future__ import annotations

import tempfile

import torch
from abtiming import ab_parser, alternate, dc_iteration, median_seconds, mtt_iteration, print_summary, student_epoch

import ddcore.conv
from ddcore.data import load_dataset

VARIANTS = {"stock": False, "conv3x3": True}


def second_derivative_seconds(size: int, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 128, size, size, generator=gen, requires_grad=True)
    conv = ddcore.conv.Conv2d(128, 128, 3, padding=1)

    def step():  # a middle layer: matching needs both its weight and its input gradient
        grad_x, grad_w = torch.autograd.grad(conv(x).tanh().sum(), (x, conv.weight), create_graph=True)
        torch.autograd.grad((grad_w**2).sum() + (grad_x**2).sum(), (x, conv.weight))

    return median_seconds(step, repeats)


def main() -> None:
    parser = ab_parser(__doc__.splitlines()[0], repeats=3)
    parser.add_argument("--workloads", nargs="+", help="a subset of the workloads, by name (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    with tempfile.TemporaryDirectory() as expert_dir:
        workloads = {
            **{f"2nd deriv {s}": (lambda _, s=s: second_derivative_seconds(s, 2 * args.repeats + 1)) for s in (16, 8)},
            "eval ipc 10": lambda _: median_seconds(student_epoch(data, 10), args.repeats),
            "eval ipc 50": lambda _: median_seconds(student_epoch(data, 50), args.repeats),
            "dc ipc 10": lambda _: dc_iteration(data, args.repeats),
            "mtt ipc 10": lambda _: mtt_iteration(data, expert_dir, args.repeats),
            "d3 ipc 10": lambda _: mtt_iteration(data, expert_dir, args.repeats, method="d3"),
        }
        workloads = {name: workloads[name] for name in args.workloads or workloads}
        results = alternate(
            workloads, VARIANTS, args.rounds, lambda on: setattr(ddcore.conv, "TWICE_DIFFERENTIABLE", on)
        )
    ddcore.conv.TWICE_DIFFERENTIABLE = True
    header = f"{args.threads} threads, {args.rounds} rounds, median of {args.repeats} after a warm-up"
    print_summary(results, tuple(VARIANTS), header)


if __name__ == "__main__":
    main()
