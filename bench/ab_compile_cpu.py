"""Side by side: a student's training epoch eager against torch.compile'd, on the CPU (the
performance issue's item 4: can fused kernels lift the evaluation epoch towards the matmul rate?).
Run by hand, never in CI:

    python bench/ab_compile_cpu.py [--ipcs 10 50] [--width 128] [--rounds 5] [--threads 1]

One process, one network per variant built from the same seed; each round times one epoch of
`train_network` (TrainConfig() defaults, DSA) for each variant in turn, so that load from other
processes hits both alike. The compiled variant's first epochs (compilation, one graph per batch
shape) are timed apart and left out of the medians. Prints per IPC: the medians, their ratio,
the compile time, and whether both variants end at the same loss within float tolerance after
the same epochs (inductor may reorder float sums, so not bit for bit).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddcore.augment import dsa_for
from ddcore.data import load_dataset
from ddcore.distill.common import Run, fresh_net, init_synthetic
from ddcore.models import ModelConfig
from ddcore.train import TrainConfig, train_network


def epoch_seconds(net, images, labels, data, seed: int) -> tuple[float, float]:
    """(seconds, last loss) of one training epoch; the generator is seeded so both variants draw alike."""
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    losses = train_network(net, images, labels, TrainConfig(epochs=1), dsa_for(data.name), gen)
    return time.perf_counter() - start, losses[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipcs", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    for ipc in args.ipcs:
        run = Run(dataset=data, ipc=ipc, seed=0, device=torch.device("cpu"), progress=False)
        images, labels = init_synthetic(run, "real", torch.Generator().manual_seed(0))
        nets = {}
        for name in ("eager", "compiled"):
            net = fresh_net(run, ModelConfig(width=args.width), torch.Generator().manual_seed(1))
            nets[name] = torch.compile(net) if name == "compiled" else net
        start = time.perf_counter()
        for seed in range(2):  # compile every batch shape (a full batch and the remainder) before timing
            epoch_seconds(nets["compiled"], images, labels, data, seed)
        compile_s = time.perf_counter() - start
        for seed in range(2):  # the eager net takes the same two epochs, so both start the rounds alike
            epoch_seconds(nets["eager"], images, labels, data, seed)
        times, last = {"eager": [], "compiled": []}, {}
        for r in range(args.rounds):
            for name, net in nets.items():
                seconds, last[name] = epoch_seconds(net, images, labels, data, 2 + r)
                times[name].append(seconds)
        eager, compiled = statistics.median(times["eager"]), statistics.median(times["compiled"])
        print(
            f"ipc {ipc}, width {args.width}, {args.threads} thread(s): eager {eager:.3f} s/epoch, compiled "
            f"{compiled:.3f} s/epoch, ratio eager/compiled {eager / compiled:.2f} (medians of {args.rounds}); "
            f"compile + 2 epochs {compile_s:.1f} s; last loss eager {last['eager']:.5f} compiled "
            f"{last['compiled']:.5f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
