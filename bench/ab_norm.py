"""Side by side: the student's instance norm as today's nn.GroupNorm(width, width) against
F.instance_norm with the same weight and bias (the performance issue's item 4: the norms are
among the memory-bound passes that hold the evaluation epoch at about half the matmul rate).
Run by hand on a quiet machine, never in CI:

    python bench/ab_norm.py [--rounds 3] [--threads 2] [--repeats 7]

Two measurements, both alternating the variants within every round:
- op: forward + backward of the norm alone on a (256, 128, 16, 16) and a (256, 128, 8, 8) batch
  (ConvNet-3 width 128's second and third blocks), with the largest difference of the outputs and
  input gradients between the variants;
- epoch: train_network for 1 epoch (TrainConfig() defaults, DSA) on ipc 10 and 50 real mnist5k
  images per class, ConvNet-3 width 128, with the forward of blocks 2 and 3's norms replaced (the
  first block is fused with its conv on the CPU and has no GroupNorm pass of its own).
Each figure is the median of `repeats` after a warm-up; the summary gives the median over rounds.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from abtiming import median_seconds, print_summary

from ddcore.augment import dsa_for
from ddcore.data import load_dataset
from ddcore.distill.common import Run, fresh_net, init_synthetic
from ddcore.models import ModelConfig
from ddcore.train import TrainConfig, train_network


def instance_norm_forward(norm: nn.GroupNorm):
    """A forward for `norm` (GroupNorm with one group per channel) that runs F.instance_norm."""
    return lambda x: F.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps)


def op_pass(norm: nn.GroupNorm, x: torch.Tensor, variant: str):
    forward = norm if variant == "group_norm" else instance_norm_forward(norm)
    grad_out = torch.randn_like(x, generator=torch.Generator().manual_seed(1))

    def step():
        xi = x.detach().requires_grad_(True)
        y = forward(xi)
        (gx,) = torch.autograd.grad(y, xi, grad_out)
        return y, gx

    return step


def epoch(data, ipc: int, variant: str):
    gen = torch.Generator().manual_seed(0)
    run = Run(dataset=data, ipc=ipc, seed=0, device=torch.device("cpu"), progress=False)
    images, labels = init_synthetic(run, "real", gen)
    net = fresh_net(run, ModelConfig(width=128), gen)
    if variant == "instance_norm":
        for m in net.features[4:]:  # blocks 2 and 3 (block 1 is fused with its conv)
            if isinstance(m, nn.GroupNorm):
                m.forward = instance_norm_forward(m)
    return lambda: train_network(net, images, labels, TrainConfig(epochs=1), dsa_for(data.name), gen)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = ("group_norm", "instance_norm")
    norm = nn.GroupNorm(128, 128)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    batches = {size: torch.randn(256, 128, size, size) for size in (16, 8)}
    for size, x in batches.items():
        (ya, ga), (yb, gb) = (op_pass(norm, x, v)() for v in variants)
        diffs = f"max |output diff| {(ya - yb).abs().max():.2e}, max |input grad diff| {(ga - gb).abs().max():.2e}"
        print(f"{size}x{size}: {diffs}")
    data = load_dataset("mnist5k")
    results: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for size, x in batches.items():
            cells = results.setdefault(f"op {size}x{size}", {v: [] for v in variants})
            for v in variants:
                cells[v].append(median_seconds(op_pass(norm, x, v), args.repeats))
        for ipc in (10, 50):
            cells = results.setdefault(f"epoch ipc {ipc}", {v: [] for v in variants})
            for v in variants:
                cells[v].append(median_seconds(epoch(data, ipc, v), args.repeats))
        cells = [f"{w} " + " / ".join(f"{c[v][-1]:.4f}" for v in variants) for w, c in results.items()]
        print(f"round {r}: " + "; ".join(cells), flush=True)
    header = f"{args.threads} threads, {args.rounds} rounds, median of {args.repeats} after a warm-up"
    print_summary(results, variants, header)


if __name__ == "__main__":
    main()
