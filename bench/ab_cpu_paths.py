"""Side by side: one evaluation epoch and one DM iteration with this session's CPU paths on and
off (issue #7). Run by hand on a quiet machine, never in CI:

    python bench/ab_cpu_paths.py [--rounds 3] [--threads 2] [--old PATH]

Each variant runs in its own process (the allocator setting is made at import), and the rounds
alternate the variants so that load from other processes hits them alike. Variants:
- stock: ddcore.models.FUSE_FIRST_BLOCK = False and DDCORE_MALLOC=default (glibc as it comes);
- fused: the fused first block only; heap: the allocator setting only; both: today's default;
- old: --old PATH, a copy of an older ddcore tree (e.g. `git archive REV ddcore | tar -x -C PATH`).
Workloads: train_network for 1 epoch (TrainConfig() defaults, DSA) on ipc real mnist5k images per
class, ipc 10 and 50, ConvNet-3 width 128; and dm at ipc 10 (256 real per class), both the median
of 7 after one warm-up. Prints the median over rounds of each variant's medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "stock": {"fuse": False, "malloc": "default"},
    "fused": {"fuse": True, "malloc": "default"},
    "heap": {"fuse": False, "malloc": "heap"},
    "both": {"fuse": True, "malloc": "heap"},
}


def worker(fuse: bool, threads: int) -> dict:
    import torch
    from abtiming import iteration_seconds

    import ddcore.models
    from ddcore.augment import dsa_for
    from ddcore.data import load_dataset
    from ddcore.distill.common import Run, fresh_net, init_synthetic
    from ddcore.models import ModelConfig
    from ddcore.train import TrainConfig, train_network

    torch.set_num_threads(threads)
    if hasattr(ddcore.models, "FUSE_FIRST_BLOCK"):
        ddcore.models.FUSE_FIRST_BLOCK = fuse
    data, out = load_dataset("mnist5k"), {}
    for ipc in (10, 50):
        gen = torch.Generator().manual_seed(0)
        run = Run(dataset=data, ipc=ipc, seed=0, device=torch.device("cpu"), progress=False)
        images, labels = init_synthetic(run, "real", gen)
        net = fresh_net(run, ModelConfig(width=128), gen)
        seconds = []
        for _ in range(8):
            start = time.perf_counter()
            train_network(net, images, labels, TrainConfig(epochs=1), dsa_for(data.name), gen)
            seconds.append(time.perf_counter() - start)
        out[f"eval ipc {ipc}"] = statistics.median(seconds[1:])
    out["dm ipc 10"] = iteration_seconds("dm", data, 10, 7, model=ModelConfig(width=128))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--old", help="folder holding an older ddcore package, timed as variant 'old'")
    args = p.parse_args()
    variants = dict(VARIANTS)
    if args.old:
        variants["old"] = {"fuse": False, "malloc": "default", "path": args.old}
    results = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, v in variants.items():
            env = {**os.environ, "DDCORE_MALLOC": v["malloc"]}
            if "path" in v:
                env["PYTHONPATH"] = v["path"]
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                json.dumps({"fuse": v["fuse"], "threads": args.threads}),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=v.get("path"), check=True)
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    keys = list(results["both"][0])
    print(
        f"{args.threads} threads, {args.rounds} rounds; seconds (median over rounds of medians of 7), "
        "and stock / variant"
    )
    print(f"{'variant':<8}" + "".join(f"{k:>22}" for k in keys))
    stock = {k: statistics.median(r[k] for r in results["stock"]) for k in keys}
    for name, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in keys}
        print(f"{name:<8}" + "".join(f"{med[k]:>14.3f} (x{stock[k] / med[k]:.2f})" for k in keys))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        a = json.loads(sys.argv[2])
        print(json.dumps(worker(a["fuse"], a["threads"])))
    else:
        main()
