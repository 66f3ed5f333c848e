"""The foundation issue's table: mnist5k, ConvNet width 128, 3 students x 300 epochs, IPC 1 and 10.

Run by hand (hours on a 2-core CPU), e.g. one process per IPC, one thread each:
    python bench/foundation_table.py --ipcs 1 --dc-iterations 30 --threads 1
    python bench/foundation_table.py --ipcs 10 --dc-iterations 3 --threads 1
Cells are cached in results/foundation/, so a stopped run picks up where it was; each run writes
results/foundation/table_ipc<ipcs>.csv.
"""

import argparse

import pandas as pd
import torch

from ddcore.data import load_dataset
from ddcore.evaluate import EvalConfig, format_mean_std, summarize
from ddcore.models import ModelConfig
from ddcore.studies.experiment import run_grid
from ddcore.train import TrainConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dm-iterations", type=int, default=1000)
    parser.add_argument("--dc-iterations", type=int, default=20, help="DC iterations (outer x inner loops each)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["dm", "random", "herding", "kmeans_coreset", "dc"],
        help="which rows to run (e.g. a second process takes the baselines)",
    )
    parser.add_argument("--cache", default="results/foundation")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    model = ModelConfig(width=128)
    eval_cfg = EvalConfig(model=model, train=TrainConfig(epochs=300), num_nets=3)
    grid = {
        "dm": {"iterations": args.dm_iterations, "model": model},
        "random": {},
        "herding": {},
        "kmeans_coreset": {},
        "dc": {"iterations": args.dc_iterations, "model": model},
    }
    frames = []
    for name in args.methods:  # one method at a time, so each line appears as soon as it is done
        options = grid[name]
        df, _ = run_grid(data, {name: options}, args.ipcs, eval_cfg, cache_dir=args.cache, progress=False)
        frames.append(df)
        print(
            name,
            format_mean_std(summarize(df)).tolist(),
            "distill s:",
            df.distill_seconds.unique().round(0).tolist(),
            flush=True,
        )
    table = summarize(pd.concat(frames, ignore_index=True))
    table["accuracy (%)"] = format_mean_std(table)
    print(table.to_string())
    table.to_csv(f"{args.cache}/table_ipc{'-'.join(map(str, args.ipcs))}_{'-'.join(args.methods)}.csv", index=False)


if __name__ == "__main__":
    main()
