"""Where one student's training epoch spends its time on the CPU, and the share of the matmul rate
it could reach if each part ran at its own limit (the performance issue's item 4). Run by hand,
never in CI:

    python bench/epoch_profile.py [--ipcs 10 50] [--threads 2] [--repeats 3]

For each IPC, one process in turn: the fp32 matmul rate (2048^2, as bench/run.py), the copy
bandwidth (dst.copy_(src) of 256 MiB: bytes read + written per second), the median epoch time
(mnist5k, ConvNet-3 width 128, TrainConfig() defaults, DSA: what evaluation trains), then one
profiled epoch (torch.profiler). Each op's self time goes to one part:

- conv: the 3x3 convolutions forward and backward, and the first block's batched matmul and
  im2col (models.conv_instance_norm runs conv 1 + its norm that way on the CPU);
- tail: instance norm, ReLU and 2x2 average pool of blocks 2 and 3, forward and backward, plus
  block 1's ReLU and pool: memory-bound passes over the conv outputs;
- augment: differentiable augmentation of each batch (ops under train.augment_batch);
- optimizer: SGD's step and zero_grad;
- other: the classifier, the loss, autograd's accumulations and copies.

The parts' shares of the profiled epoch scale the unprofiled median (the profiler adds overhead
per op). The tail's time is also given in copies: one copy = reading and writing every conv
output of the epoch once (forward batches only) at the measured copy bandwidth. A fused tail
(norm statistics, then normalise + ReLU + pool in one pass; backward recomputing from the conv
output) must still read each conv output about 4 times and write its gradient once: about 2.5
copies. The bounds then give the epoch's ratio (conv+linear FLOPs / seconds / matmul rate):

- measured: as timed;
- fused tail: the tail at 2.5 copies, the rest as measured;
- convs only: every part but conv free (the ratio of the convolutions in place).
"""

from __future__ import annotations

import argparse
import contextlib
from unittest import mock

import torch
from abtiming import matmul_gflops, median_seconds, student_epoch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

import ddcore.models
import ddcore.train
from ddcore.data import load_dataset
from ddcore.models import ConvNet, count_flops

FUSED_TAIL_COPIES = 2.5
PARTS = ("conv", "tail", "augment", "optimizer", "other")


def copy_gbytes_per_s(mib: int = 256) -> float:
    src = torch.randn(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_seconds(lambda: dst.copy_(src), 5) / 1e9


# Name fragments of ops, autograd nodes and the scopes added below -> part; the innermost match in
# an op's chain (the op, then its callers) wins, after the augment and optimizer scopes.
CONV_NAMES = ("convolution", "Convolution", "first block", "bmm", "Bmm", "im2col", "Im2Col", "col2im", "Col2Im")
TAIL_NAMES = (
    "pool",  # the AvgPool2x2 scope: avg_pool_2x2's matmul, or avg_pool2d
    "MmBackward0",  # the pool's matmul backward (the classifier is an addmm, block 1 a bmm)
    "avg_pool2d",
    "AvgPool2D",
    "group_norm",
    "GroupNorm",
    "relu",
    "Relu",
    "clamp_min",
    "threshold_backward",
    "Threshold",
)


def part_of(event, parents: dict) -> str:
    """The part an op's self time belongs to, from its chain of callers (see the docstring)."""
    chain = [event]
    while parents.get(chain[-1]) is not None:
        chain.append(parents[chain[-1]])
    names = [e.name for e in chain]
    if "augment" in names:
        return "augment"
    if any(n.startswith("Optimizer.") for n in names):
        return "optimizer"
    for n in names:
        if any(k in n for k in CONV_NAMES):
            return "conv"
        if any(k in n for k in TAIL_NAMES):
            return "tail"
    return "other"


def labelled(fn, scope: str):
    """fn run inside a profiler scope named `scope` (its forward ops then carry that name)."""

    def wrapper(*args, **kwargs):
        with record_function(scope):
            return fn(*args, **kwargs)

    return wrapper


def profiled_parts(epoch) -> dict[str, float]:
    """Self CPU seconds per part of one profiled call of epoch()."""
    scopes = {
        (ddcore.train, "augment_batch"): "augment",
        (ddcore.models, "conv_instance_norm"): "first block",
        (ddcore.models.AvgPool2x2, "forward"): "pool",
    }
    with contextlib.ExitStack() as stack:
        for (owner, name), scope in scopes.items():
            stack.enter_context(mock.patch.object(owner, name, labelled(getattr(owner, name), scope)))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            epoch()
    events = prof.events()
    parents = {e: e.cpu_parent for e in events}
    seconds = dict.fromkeys(PARTS, 0.0)
    for e in events:
        seconds[part_of(e, parents)] += e.self_cpu_time_total / 1e6  # a scope's self time is ~0
    return seconds


def epoch_sizes(ipc: int, classes: int = 10) -> tuple[int, int]:
    """(conv+linear FLOPs of one training epoch, bytes of every conv output of its forward batches)."""
    net = ConvNet(1, classes, (28, 28), width=128)
    x = torch.zeros(1, 1, 28, 28)
    flops = 3 * count_flops(net, x) - count_flops(net.features[0], x)  # the images need no gradient
    conv_outputs = 0
    for m in net.features:  # the stock modules, one image: conv, norm, ReLU, pool per block
        x = m(x)
        conv_outputs += x.numel() if isinstance(m, nn.Conv2d) else 0
    return flops * classes * ipc, 4 * conv_outputs * classes * ipc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ipcs", type=int, nargs="+", default=[10, 50])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    for ipc in args.ipcs:
        rate, bandwidth = matmul_gflops(5), copy_gbytes_per_s()
        epoch = student_epoch(data, ipc)
        seconds = median_seconds(epoch, args.repeats)
        parts = profiled_parts(epoch)
        scale = seconds / sum(parts.values())
        parts = {k: v * scale for k, v in parts.items()}
        flops, conv_bytes = epoch_sizes(ipc)
        copy_s = 2 * conv_bytes / (bandwidth * 1e9)
        ideal = flops / (rate * 1e9)  # the epoch at the matmul rate
        fused = seconds - parts["tail"] + FUSED_TAIL_COPIES * copy_s
        print(
            f"\nIPC {ipc}, {args.threads} threads: matmul {rate:.0f} GFLOP/s, copy {bandwidth:.1f} GB/s; "
            f"epoch {seconds:.3f} s (median of {args.repeats}), {flops / 1e9:.1f} GFLOP, "
            f"conv outputs {conv_bytes / 2**20:.0f} MiB (one copy {copy_s * 1e3:.1f} ms)"
        )
        for k in PARTS:
            extra = f" = {parts[k] / copy_s:.1f} copies" if k == "tail" else ""
            extra += f", ratio in place {ideal / parts[k]:.2f}" if k == "conv" else ""
            print(f"  {k:<10} {parts[k]:.3f} s  {parts[k] / seconds:5.1%}{extra}")
        print(
            f"  ratio: measured {ideal / seconds:.2f}; fused tail ({FUSED_TAIL_COPIES} copies) "
            f"{ideal / fused:.2f}; convs only {ideal / parts['conv']:.2f}"
        )


if __name__ == "__main__":
    main()
