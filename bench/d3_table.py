"""D3 against prototypes at equal storage, and D3's learning curve (the D3 issue, items 3, 4 and 6).

For one data set and each distillation seed: random real images (hard labels, and the labeller's
soft labels), DM, MTT and D3 (trajectory matching + MMD, two optimizer steps: D3Config's defaults;
also evaluated with hard labels) at budgets in IPC-equivalents (ddcore.storage), through
`ddcore.studies.d3_experiment.storage_grid`. `--d3-curve N1 N2 ...` adds D3 distilled for N1, N2, ...
iterations (each its own run) at the same budgets: accuracy against iterations.

    python bench/d3_table.py --dataset mnist5k_pairs --budgets 1 2 --seeds 0 1 2
    python bench/d3_table.py --dataset mnist5k --budgets 2 --d3-iterations 500 --d3-curve 40 2000

Every set, the experts and the labeller are cached under --cache/<dataset>_w<width>_seed<seed>/ (an
interrupted run picks up there); one row per (method, budget, seed, D3 iterations) is appended to
--cache/rows.jsonl with the students' accuracies as a list and the settings that made it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddcore.data import load_dataset
from ddcore.evaluate import EvalConfig
from ddcore.experts import ExpertConfig
from ddcore.labels import LabellerConfig
from ddcore.models import ModelConfig
from ddcore.studies.d3_experiment import storage_grid
from ddcore.train import TrainConfig


def run_grid(data, budgets, methods, d3_options, args, seed, iterations):
    """storage_grid for one seed and one D3 iteration count, its rows as one record per cell."""
    model = ModelConfig(width=args.width)
    eval_cfg = EvalConfig(model=model, train=TrainConfig(epochs=args.epochs), num_nets=args.students)
    labeller = LabellerConfig(epochs=args.labeller_epochs, model=model)
    cache = Path(args.cache) / f"{data.name}_w{args.width}_seed{seed}"
    cache.mkdir(parents=True, exist_ok=True)
    methods = {name: ({**opts, "experts_dir": str(cache)} if name == "mtt" else opts) for name, opts in methods.items()}
    start = time.perf_counter()
    df, sets = storage_grid(
        data,
        budgets,
        methods,
        {**d3_options, "iterations": iterations},
        eval_cfg,
        labeller,
        seed=seed,
        cache_dir=cache,
        hard_labels=True,
    )
    changed = [f"{k}{v:g}" for k, v in d3_options.items() if k in ("lr_prior", "lr_decoder")]
    suffix = "@" + ",".join(changed) if changed else ""
    records = []
    for (method, budget), cell in df.groupby(["method", "budget"], sort=False):
        syn = sets[(method, budget)]
        records.append(
            {
                "dataset": data.name,
                "classes": data.num_classes,
                # D3 at other than D3Config's rates is named apart, so it never mixes with the claim's rows
                "method": method + suffix if method.startswith("d3") else method,
                "lr_prior": d3_options.get("lr_prior") if method.startswith("d3") else None,
                "lr_decoder": d3_options.get("lr_decoder") if method.startswith("d3") else None,
                "budget": int(budget),
                "seed": seed,
                "d3_iterations": iterations if method.startswith("d3") else None,
                "iterations": syn.meta.get("config", {}).get("iterations"),
                "ipc_equivalent": float(cell["ipc_equivalent"].iloc[0]),
                "bytes": int(cell["bytes"].iloc[0]),
                "decoder_width": None if cell["decoder_width"].isna().all() else int(cell["decoder_width"].iloc[0]),
                "label_mismatch": syn.meta.get("label_mismatch"),
                "accuracy": cell["accuracy"].tolist(),
                "distill_seconds": syn.meta.get("seconds"),
                "width": args.width,
                "epochs": args.epochs,
                "students": args.students,
                "settings": vars(args),
            }
        )
    print(f"{data.name} seed {seed} D3 iterations {iterations}: {time.perf_counter() - start:.0f} s", flush=True)
    for r in records:
        acc = 100 * torch.tensor(r["accuracy"])
        print(
            f"  {r['method']:12s} budget {r['budget']:3d} ipc-eq {r['ipc_equivalent']:.2f}: "
            f"{acc.mean():.1f} +- {acc.std():.1f}",
            flush=True,
        )
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist5k_pairs")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="*", default=["random", "dm", "mtt"], choices=["random", "dm", "mtt"])
    parser.add_argument("--d3-iterations", type=int, default=500)
    parser.add_argument("--d3-curve", type=int, nargs="*", default=[], help="more D3 iteration counts")
    parser.add_argument("--dm-iterations", type=int, default=300)
    parser.add_argument("--mtt-iterations", type=int, default=300)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=300, help="student epochs")
    parser.add_argument("--students", type=int, default=3)
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--expert-epochs", type=int, default=8)
    parser.add_argument("--max-start-epoch", type=int, default=4)
    parser.add_argument("--labeller-epochs", type=int, default=20)
    parser.add_argument("--latent-dim", type=int, default=64)
    parser.add_argument("--d3-lr-prior", type=float, default=None, help="D3's prior rate (default D3Config's)")
    parser.add_argument("--d3-lr-decoder", type=float, default=None, help="D3's decoder rate (default D3Config's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default="results/d3")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    model = ModelConfig(width=args.width)
    experts = ExpertConfig(num_experts=args.experts, epochs=args.expert_epochs, model=model)
    # experts and the labeller are kept in each seed's folder (storage_grid gives D3 that folder;
    # MTT gets it in run_grid), so MTT and D3 share one buffer and one labeller per seed
    trajectory = {"max_start_epoch": args.max_start_epoch, "experts": experts}
    options = {
        "random": {},
        "dm": {"model": model, "iterations": args.dm_iterations},
        "mtt": {"iterations": args.mtt_iterations, **trajectory},
    }
    methods = {name: options[name] for name in args.methods}
    d3_options = {"latent_dim": args.latent_dim, **trajectory}
    rates = {"lr_prior": args.d3_lr_prior, "lr_decoder": args.d3_lr_decoder}
    d3_options.update({k: v for k, v in rates.items() if v is not None})
    rows = Path(args.cache) / "rows.jsonl"
    rows.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for iterations in [args.d3_iterations, *args.d3_curve]:
            grid_methods = methods if iterations == args.d3_iterations else {}
            for record in run_grid(data, args.budgets, grid_methods, d3_options, args, seed, iterations):
                with open(rows, "a") as f:
                    f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
