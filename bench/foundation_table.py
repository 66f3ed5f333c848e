"""The foundation issue's table: mnist5k, ConvNet width 128, 3 students x 300 epochs, IPC 1 and 10.

Run by hand (hours on a 2-core CPU):  python bench/foundation_table.py [--threads 1] [--dc-iterations 200 20]
Cells are cached in results/foundation/, so a stopped run picks up where it was.
"""
import argparse

import pandas as pd
import torch

from ddcore.data import load_dataset
from ddcore.evaluate import EvalConfig, summarize
from ddcore.experiment import run_grid
from ddcore.models import ModelConfig
from ddcore.train import TrainConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dm-iterations", type=int, default=1000)
    parser.add_argument("--dc-iterations", type=int, nargs=2, default=[200, 20],
                        help="DC iterations at IPC 1 and at IPC 10")
    parser.add_argument("--cache", default="results/foundation")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    model = ModelConfig(width=128)
    eval_cfg = EvalConfig(model=model, train=TrainConfig(epochs=300), num_nets=3)
    frames = []
    grid = {"random": {}, "herding": {}, "kmeans_coreset": {},
            "dm": {"iterations": args.dm_iterations, "model": model}}
    df, _ = run_grid(data, grid, [1, 10], eval_cfg, cache_dir=args.cache, progress=False)
    frames.append(df)
    print(summarize(df).to_string(), flush=True)
    for ipc, iters in zip([1, 10], args.dc_iterations):
        df, _ = run_grid(data, {"dc": {"iterations": iters, "model": model}}, [ipc], eval_cfg,
                         cache_dir=args.cache, progress=False)
        frames.append(df)
        print(summarize(df).to_string(), flush=True)
    table = summarize(pd.concat(frames, ignore_index=True))
    print(table.to_string())
    table.to_csv(f"{args.cache}/table.csv")


if __name__ == "__main__":
    main()
