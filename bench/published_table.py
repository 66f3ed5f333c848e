"""Side by side with the published numbers on a full data set (the Fashion-MNIST issue).

One cell = one (method, ipc, seed): distilled once, keeping snapshots of the images at the
iteration counts in --eval-at, then every snapshot evaluated by the papers' protocol
(ConvNet-3 width 128, instance norm, final-epoch accuracy over --students students).
Run by hand, in the background, one process per queue of cells, e.g. (one thread each):

    python bench/published_table.py --method dm  --ipc 1 10 --iterations 500 --eval-at 100 500
    python bench/published_table.py --method dsa --ipc 1 --iterations 300 --eval-at 50 100 300
    python bench/published_table.py --method random --ipc 1 10

Cells and evaluations are cached in --cache (checkpoints every 10 iterations, resumed on a
restart); every finished evaluation is appended to <cache>/rows.jsonl with its settings and
seconds, which the results page reads (a restarted run appends a cached row again: readers keep
the last row per method, ipc, seed and iteration). `dsa` is DC with DSA (the DSA paper's method), `dc`
without augmentation (then 300 student epochs without DSA, as the DC paper).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ddcore.data import load_dataset
from ddcore.distill import distill, method_config
from ddcore.evaluate import EvalConfig
from ddcore.models import ModelConfig
from ddcore.studies.experiment import evaluate_cached
from ddcore.synthetic import SyntheticSet
from ddcore.train import TrainConfig

# name on the command line -> (registered method, its options besides iterations, student epochs, DSA)
METHODS = {
    "random": ("random", {}, 1000, True),
    "dm": ("dm", {}, 1000, True),
    "dsa": ("dc", {"dsa": True}, 1000, True),
    "dc": ("dc", {"dsa": False}, 300, False),
}


def distill_cell(name, data, ipc, seed, iterations, eval_at, cache: Path, threads_note: str):
    """Distil one cell (or load it), keeping snapshots at eval_at; returns the SyntheticSet."""
    method, options, _, _ = METHODS[name]
    model = ModelConfig(width=128)
    if method != "random":
        options = {**options, "iterations": iterations, "model": model}
    stem = cache / f"{data.name}_{name}_ipc{ipc}_seed{seed}_it{iterations}"
    path = stem.with_suffix(".safetensors")
    if path.exists():
        return SyntheticSet.load(path)
    method_config(method, **options)  # a typo fails before any work
    start = time.perf_counter()
    syn = distill(
        method,
        data,
        ipc,
        seed=seed,
        progress=False,
        checkpoint=stem.with_suffix(".ckpt"),
        checkpoint_every=10,
        resume=True,
        snapshots=tuple(eval_at),
        on_iteration=lambda it, loss, s: _log_loss(stem, it, loss, s),
        **options,
    )
    syn.meta.update(seconds=time.perf_counter() - start, threads=threads_note, label=name)
    syn.save(path)
    stem.with_suffix(".ckpt").unlink(missing_ok=True)
    return syn


def _log_loss(stem: Path, it: int, loss: float, seconds: float) -> None:
    """Append the loss curve as it grows (a restarted run appends the resumed iterations)."""
    with open(stem.with_suffix(".loss.jsonl"), "a") as f:
        f.write(json.dumps({"iteration": it, "loss": loss, "seconds": seconds}) + "\n")
    if it % 50 == 0:
        print(f"{stem.name} iteration {it} loss {loss:.4g} ({seconds:.2f} s)", flush=True)


def checkpoint_set(name, data, ipc, seed, iterations, cache: Path) -> tuple[SyntheticSet, int]:
    """The images of an unfinished cell's latest checkpoint, as a set, with its iteration count."""
    from ddcore.io import load_checkpoint

    stem = cache / f"{data.name}_{name}_ipc{ipc}_seed{seed}_it{iterations}"
    state = load_checkpoint(stem.with_suffix(".ckpt"))
    labels = torch.arange(data.num_classes).repeat_interleave(ipc)
    meta = {
        "method": METHODS[name][0],
        "dataset": data.name,
        "ipc": ipc,
        "seed": seed,
        "config": {"iterations": int(state["iteration"])},
    }
    return SyntheticSet(state["params"]["images_syn"], labels, meta), int(state["iteration"])


def evaluate_cell(
    name, syn, data, iteration, students, cache: Path, rows_file: Path, run_iterations=None, partial=False
):
    _, _, epochs, dsa = METHODS[name]
    cfg = EvalConfig(model=ModelConfig(width=128), train=TrainConfig(epochs=epochs), num_nets=students, dsa=dsa)
    target = syn if iteration is None else syn.snapshot(iteration)
    target.meta.setdefault("config_repr", repr(target.meta.get("config")) + f"@{iteration}")
    start = time.perf_counter()
    df = evaluate_cached(target, data, cfg, syn.meta["seed"], "cpu", cache, progress=False)
    last = syn.meta.get("config", {}).get("iterations", 0)
    record = {
        "dataset": data.name,
        "method": name,
        "ipc": syn.meta["ipc"],
        "seed": syn.meta["seed"],
        "iteration": last if iteration is None else iteration,
        "students": students,
        "epochs": epochs,
        "dsa_eval": dsa,
        "width": 128,
        "accuracies": df["accuracy"].tolist(),
        "run_iterations": run_iterations if run_iterations is not None else last,
        "partial": partial,
        "distill_seconds": syn.meta.get("seconds"),
        "eval_seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    with open(rows_file, "a") as f:
        f.write(json.dumps(record) + "\n")
    accs = df["accuracy"] * 100
    print(f"{name} ipc {record['ipc']} it {iteration}: {accs.mean():.1f} +- {accs.std():.1f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--method", choices=sorted(METHODS), required=True)
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument(
        "--eval-at", type=int, nargs="*", default=[], help="iteration counts evaluated besides the last one"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--students", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default="results/published")
    parser.add_argument(
        "--from-checkpoint",
        action="store_true",
        help="evaluate the latest checkpoint of an unfinished cell (a run stopped early)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.dataset)
    for ipc in args.ipc:
        for seed in args.seeds:
            eval_at = sorted(n for n in set(args.eval_at) if 0 < n < args.iterations)
            if args.from_checkpoint:
                syn, _ = checkpoint_set(args.method, data, ipc, seed, args.iterations, cache)
                evaluate_cell(
                    args.method,
                    syn,
                    data,
                    None,
                    args.students,
                    cache,
                    cache / "rows.jsonl",
                    run_iterations=args.iterations,
                    partial=True,
                )
                continue
            syn = distill_cell(
                args.method, data, ipc, seed, args.iterations, eval_at, cache, f"{args.threads} thread(s)"
            )
            for n in [None] if args.method == "random" else [*eval_at, None]:
                evaluate_cell(args.method, syn, data, n, args.students, cache, cache / "rows.jsonl")


if __name__ == "__main__":
    main()
