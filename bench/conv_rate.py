"""Side by side: the ConvNet's 3x3 convolutions (forward + backward through input and weights, as a
student trains them) against the fp32 matmul rate, on the CPU (the performance issue's item 4: is
the evaluation epoch's 0.53 of the matmul rate the convolutions, or everything else?). Run by
hand, never in CI:

    python bench/conv_rate.py [--batch 256] [--rounds 3] [--threads 1]

Each round times, in turn: torch.mm of two 2048 x 2048 matrices, then a 128 -> 128 3x3 conv
(padding 1) at 16 x 16 and at 8 x 8 (ConvNet-3 width 128's second and third blocks on 28 x 28 or
32 x 32 input) in NCHW and channels-last, forward and backward (3 x 2 x MACs FLOPs). Each figure
is the median of 3 after a warm-up; a conv's ratio is its GFLOP/s over the matmul's of the same
round, so load from other processes hits both alike. Prints every round and the median ratios.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from abtiming import matmul_gflops, median_seconds


def conv_gflops(batch: int, size: int, channels_last: bool, width: int = 128) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, width, size, size).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(width, width, 3, 3).contiguous(memory_format=fmt).requires_grad_()

    def step():
        y = F.conv2d(x, w, padding=1)
        y.backward(torch.ones_like(y))

    return 3 * 2 * batch * size * size * 9 * width * width / median_seconds(step, 3) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cases = [(size, cl) for size in (16, 8) for cl in (False, True)]
    ratios = {case: [] for case in cases}
    for r in range(args.rounds):
        rate = matmul_gflops(3)
        cells = [f"matmul {rate:.0f} GFLOP/s"]
        for size, cl in cases:
            g = conv_gflops(args.batch, size, cl)
            ratios[(size, cl)].append(g / rate)
            cells.append(f"{size}x{size} {'channels_last' if cl else 'NCHW'} {g:.0f} ({g / rate:.2f})")
        print(f"round {r}: " + "; ".join(cells), flush=True)
    names = {(s, cl): f"{s}x{s} {'channels_last' if cl else 'NCHW'}" for s, cl in cases}
    print("median conv / matmul: " + "; ".join(f"{names[c]} {statistics.median(v):.2f}" for c, v in ratios.items()))


if __name__ == "__main__":
    main()
