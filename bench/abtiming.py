"""Helpers shared by the side-by-side (A/B) scripts in bench/: a median of repeated calls after a
warm-up, one student's training epoch as a workload, and the summary table of variants measured
alternately over rounds."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls of fn() after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(repeats: int, n: int = 2048) -> float:
    """fp32 GFLOP/s of torch.mm of two n x n matrices: 2 n^3 / the median of `repeats` after a warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def student_epoch(data, ipc: int, prepare_net=None, prepare_images=None):
    """A call that trains one ConvNet-3 width 128 student for 1 epoch (TrainConfig() defaults, DSA)
    on `ipc` real images per class of `data`, as evaluation does; built from seed 0. prepare_net /
    prepare_images, when given, turn the fresh network / the images into a variant's before timing."""
    from ddcore.augment import dsa_for  # here, not at import: conv_rate.py needs only the timer
    from ddcore.distill.common import Run, fresh_net, init_synthetic
    from ddcore.models import ModelConfig
    from ddcore.train import TrainConfig, train_network

    gen = torch.Generator().manual_seed(0)
    run = Run(dataset=data, ipc=ipc, seed=0, device=torch.device("cpu"), progress=False)
    images, labels = init_synthetic(run, "real", gen)
    net = fresh_net(run, ModelConfig(width=128), gen)
    net = prepare_net(net) if prepare_net else net
    images = prepare_images(images) if prepare_images else images
    return lambda: train_network(net, images, labels, TrainConfig(epochs=1), dsa_for(data.name), gen)


def iteration_seconds(method: str, data, ipc: int, repeats: int, **options) -> float:
    """Median seconds of `repeats` iterations of distill(method, data, ipc, seed=0, **options) after a
    warm-up one, as the method's own loop reports them."""
    from ddcore.distill import distill  # here, not at import: conv_rate.py needs only the timer

    seconds = []
    distill(
        method,
        data,
        ipc,
        seed=0,
        progress=False,
        iterations=1 + repeats,
        on_iteration=lambda it, loss, s: seconds.append(s),
        **options,
    )
    return statistics.median(seconds[1:])


def mtt_iteration(data, expert_dir: str, repeats: int, accel=None, method: str = "mtt") -> float:
    """Median seconds of `repeats` MTT iterations after a warm-up one, at IPC 10 (MTTConfig() defaults,
    DSA, one 4-epoch width-128 expert trained into expert_dir on the first call), with `accel`.
    method="d3": D3 iterations instead (D3Config() defaults, hard labels), matching the same expert."""
    from ddcore.experts import ExpertConfig
    from ddcore.models import ModelConfig

    return iteration_seconds(
        method,
        data,
        10,
        repeats,
        dsa=True,
        experts=ExpertConfig(num_experts=1, epochs=4, model=ModelConfig(width=128)),
        experts_dir=expert_dir,
        max_start_epoch=2,
        expert_epochs=2,
        accel=accel,
        **({"soft_labels": False} if method == "d3" else {}),
    )


def dc_iteration(data, repeats: int, ipc: int = 10, outer_loop: int = 2) -> float:
    """Median seconds of `repeats` DC iterations after a warm-up one (DCConfig() defaults, DSA, ConvNet-3
    width 128) of `outer_loop` outer steps, each with the reference's inner loop at `ipc`."""
    return iteration_seconds("dc", data, ipc, repeats, dsa=True, outer_loop=outer_loop)


def ab_parser(description: str, repeats: int = 5) -> argparse.ArgumentParser:
    """The options every A/B script takes: --rounds, --threads, --repeats (callers add their own)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=repeats)
    return p


def alternate(
    workloads: dict[str, Callable[[object], float]],
    variants: dict[str, object],
    rounds: int,
    apply: Callable[[object], None] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Seconds of every workload under every variant, the variants in turn within each round (so that
    load from other processes hits them alike): workloads[w](value) for each variant's value, after
    apply(value) when given. Prints each round's figures; returns {workload: {variant: [seconds]}}."""
    results: dict[str, dict[str, list[float]]] = {}
    for r in range(rounds):
        for work, seconds in workloads.items():
            cells = results.setdefault(work, {name: [] for name in variants})
            for name, value in variants.items():
                if apply is not None:
                    apply(value)
                cells[name].append(seconds(value))
            print(f"round {r}: {work}: " + " / ".join(f"{cells[n][-1]:.4f}" for n in variants), flush=True)
    return results


def print_summary(results: dict[str, dict[str, list[float]]], variants: tuple[str, ...], header: str) -> None:
    """One line per workload: the median over rounds of each variant's seconds, and each later
    variant's speed-up over the first (first / variant: above 1 means that variant is faster)."""
    base, others = variants[0], variants[1:]
    print(f"\n{header}; speed-up = {base} / variant")
    print(
        f"{'workload':<14}" + "".join(f"{v + ' s':>18}" for v in variants) + "".join(f"{'x ' + v:>18}" for v in others)
    )
    for work, cells in results.items():
        med = {v: statistics.median(cells[v]) for v in variants}
        print(
            f"{work:<14}"
            + "".join(f"{med[v]:>18.4f}" for v in variants)
            + "".join(f"{med[base] / med[v]:>18.2f}" for v in others)
        )
