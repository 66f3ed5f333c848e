"""Side by side: the tail of a ConvNet block (instance norm -> ReLU -> 2x2 average pooling) as
today's stock modules against two alternatives (the performance issue's item 4: these
memory-bound passes hold the evaluation epoch at about half the matmul rate while the
convolutions alone run at 0.71-0.87 of it, bench/conv_rate.py). Run by hand on a quiet machine,
never in CI:

    python bench/ab_block_tail.py [--rounds 3] [--threads 2] [--repeats 7]

Variants of blocks 2 and 3's tails (block 1 is fused with its conv on the CPU, models.py):
- stock: nn.GroupNorm(width, width) -> nn.ReLU(inplace) -> nn.AvgPool2d(2), as ConvNet builds it;
- instance_norm: F.instance_norm with the same weight and bias, then the same ReLU and pooling;
- compiled: the three as one torch.compile'd function (inductor fuses the elementwise passes of
  forward and backward; compilation happens in the warm-up and is not timed).
Two measurements, the variants alternating within every round so that load from other
processes hits them alike:
- op: forward + backward of the tail alone on (256, 128, 16, 16) and (256, 128, 8, 8) batches
  (width 128's second and third blocks), after a check of the largest output and input-gradient
  differences against stock;
- epoch: train_network for 1 epoch (TrainConfig() defaults, DSA) on ipc 10 and 50 real mnist5k
  images per class, ConvNet-3 width 128.
Each figure is the median of `repeats` after a warm-up; the summary gives the median over rounds.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from abtiming import ab_parser, alternate, median_seconds, print_summary, student_epoch

from ddcore.data import load_dataset

VARIANTS = ("stock", "instance_norm", "compiled")


def stock_tail(x, weight, bias, eps):
    return F.avg_pool2d(F.relu(F.group_norm(x, x.shape[1], weight, bias, eps)), 2)


def instance_norm_tail(x, weight, bias, eps):
    return F.avg_pool2d(F.relu(F.instance_norm(x, weight=weight, bias=bias, eps=eps)), 2)


compiled_tail = torch.compile(stock_tail, dynamic=False)
TAILS = {"stock": stock_tail, "instance_norm": instance_norm_tail, "compiled": compiled_tail}


def use_tail(net: nn.Module, variant: str) -> nn.Module:
    """`net` with blocks 2 and 3's norm -> act -> pool run by the variant's tail (stock: unchanged)."""
    if variant == "stock":
        return net
    tail = TAILS[variant]
    for start in range(4, len(net.features), 4):
        norm = net.features[start + 1]
        norm.forward = lambda x, norm=norm: tail(x, norm.weight, norm.bias, norm.eps)
        net.features[start + 2] = nn.Identity()
        net.features[start + 3] = nn.Identity()
    return net


def op_pass(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, variant: str):
    grad_out = torch.randn(
        x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2, generator=torch.Generator().manual_seed(1)
    )

    def step():
        xi = x.detach().requires_grad_(True)
        y = TAILS[variant](xi, weight, bias, 1e-5)
        (gx,) = torch.autograd.grad(y, (xi,), grad_out)
        return y, gx

    return step


def main() -> None:
    args = ab_parser(__doc__.splitlines()[0], repeats=7).parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    weight = (torch.rand(128, generator=gen) + 0.5).requires_grad_()
    bias = (torch.rand(128, generator=gen) - 0.5).requires_grad_()
    batches = {size: torch.randn(256, 128, size, size, generator=gen) for size in (16, 8)}
    for size, x in batches.items():
        y0, g0 = op_pass(x, weight, bias, "stock")()
        for v in VARIANTS[1:]:
            y, g = op_pass(x, weight, bias, v)()
            diffs = f"max |output diff| {(y - y0).abs().max():.1e}, input grad {(g - g0).abs().max():.1e}"
            print(f"{size}x{size} {v}: {diffs}")
    data = load_dataset("mnist5k")
    workloads = {
        **{
            f"op {size}x{size}": (lambda v, x=x: median_seconds(op_pass(x, weight, bias, v), args.repeats))
            for size, x in batches.items()
        },
        **{
            f"epoch ipc {ipc}": (
                lambda v, ipc=ipc: median_seconds(student_epoch(data, ipc, partial(use_tail, variant=v)), args.repeats)
            )
            for ipc in (10, 50)
        },
    }
    results = alternate(workloads, {v: v for v in VARIANTS}, args.rounds)
    print_summary(results, VARIANTS, f"{args.threads} threads, {args.rounds} rounds, median of {args.repeats}")


if __name__ == "__main__":
    main()
