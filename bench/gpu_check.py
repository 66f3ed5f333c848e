"""Speed and accuracy of the GPU options of ddcore.accel (issue #7): bf16 autocast, channels_last,
torch.compile, against fp32. Run by hand on a GPU machine, never in CI:

    python bench/gpu_check.py [--device cuda] [--out results/bench] [--only dm dc mtt d3 eval accuracy]
    python bench/gpu_check.py --device cpu --tiny      # a smoke test of the script, ~1-2 minutes here

Speed table: DM, DC, MTT and D3 (distill's own loop), and one evaluation epoch (train_network,
TrainConfig() defaults), at the CIFAR-10 shape (N(0, 1) tensors, 3x32x32, 10 classes, 300 real
images per class), ConvNet-3 width 128 (instance norm), IPC 10, DSA on, 256 real images per class.
DC uses the reference loops for IPC 10 (10 outer, 50 inner); MTT and D3 syn_steps 10, all 100
synthetic images per step, one 4-epoch expert (trained before any timing, starts 0..2, 2 epochs
ahead); D3 matches trajectories plus the MMD and skips its soft labels. Configurations:
  a  fp32:                AccelConfig()
  b  bf16 + channels_last: AccelConfig(amp="bf16", channels_last=True)
  c  b + compile:         AccelConfig(amp="bf16", channels_last=True, compile=True), evaluation only
  b+batched:              b with DCConfig(batch_classes=True): every class's gradients in one vmap pass, DC only
Timing: 2 warm-up iterations (epochs for eval; c's compilation happens in them), then the median
of 5, each between two torch.cuda.synchronize() calls (for distill: the stamps of consecutive
on_iteration calls, each taken after a synchronize). Speed-up = a's seconds / b's (or c's).

Accuracy check: DM at IPC 10 on the real mnist5k (offline), 200 iterations, width 128, each set
evaluated by 3 students of 300 epochs (EvalConfig, DSA), once with a (distillation and students
in fp32) and once with b (both in bf16 + channels_last); mean +- std of test accuracy, percent.

Expected duration on one H100/H200: 3-5 minutes (DC's 7 iterations of 460 steps in a and b, and
c's compilation, dominate), well under 8. Outputs: the tables on stdout and <out>/gpu_check_<device>.csv
(<out>/gpu_check_<device>_tiny.csv with --tiny), one row per (table, method, config). A configuration
that raises gives a row whose status holds the error, and the run goes on.

--tiny checks that the script works; it is not a measurement: width 8, IPC 2, 20 images per class,
16 real per class, DC loops 2 x 2, syn_steps 2, a 2-epoch expert, 1 warm-up and 2 timed
iterations; the accuracy check with 5 DM iterations and 2 students of 3 epochs.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from ddcore.accel import AccelConfig, autocast, maybe_compile
from ddcore.augment import dsa_for
from ddcore.data import Dataset, load_dataset
from ddcore.distill import distill
from ddcore.distill.common import Run, fresh_net, init_synthetic
from ddcore.evaluate import EvalConfig, evaluate_synthetic, summarize
from ddcore.experts import ExpertConfig, load_or_train_experts
from ddcore.models import ModelConfig
from ddcore.runtime import resolve_device
from ddcore.train import TrainConfig, train_network

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import random_cifar10  # noqa: E402  (bench/run.py: CIFAR-10's shape, N(0, 1) pixels)

METHODS = ("dm", "dc", "mtt", "d3")
PARTS = METHODS + ("eval", "accuracy")
CONFIGS = {
    "a": AccelConfig(),
    "b": AccelConfig(amp="bf16", channels_last=True),
    "c": AccelConfig(amp="bf16", channels_last=True, compile=True),
}
# configurations timed per part; "b+batched" is b with DCConfig(batch_classes=True) (one vmap pass)
PART_CONFIGS = {"eval": ("a", "b", "c"), "dc": ("a", "b", "b+batched")}


@dataclass
class Settings:
    """What one run measures: the full check, or --tiny's smoke test."""

    width: int = 128  # ConvNet-3 width of every network
    ipc: int = 10
    per_class: int = 300  # random CIFAR-shaped training images per class
    batch_real: int = 256  # real images per class per iteration
    dc_loops: tuple[int, int] | None = None  # None: the reference's (outer, inner) for the ipc
    syn_steps: int = 10  # mtt, d3
    expert_epochs: int = 4  # one expert; targets `ahead` epochs after starts 0..epochs - ahead
    ahead: int = 2
    warmup: int = 2
    repeats: int = 5
    acc_iterations: int = 200  # the accuracy check's DM iterations
    acc_epochs: int = 300  # and its students
    acc_nets: int = 3


TINY = Settings(
    width=8,
    ipc=2,
    per_class=20,
    batch_real=16,
    dc_loops=(2, 2),
    syn_steps=2,
    expert_epochs=2,
    ahead=1,
    warmup=1,
    repeats=2,
    acc_iterations=5,
    acc_epochs=3,
    acc_nets=2,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def experts_config(s: Settings) -> ExpertConfig:
    return ExpertConfig(num_experts=1, epochs=s.expert_epochs, model=ModelConfig(width=s.width))


def method_options(method: str, s: Settings, experts_dir: Path) -> dict:
    """distill()'s keyword options for a timed run of `method` (warm-up + timed iterations)."""
    model, iterations = ModelConfig(width=s.width), s.warmup + s.repeats
    if method == "dm":
        return dict(iterations=iterations, batch_real=s.batch_real, model=model)
    if method == "dc":
        outer, inner = s.dc_loops or (None, None)  # None: DCConfig's reference loops for the ipc
        return dict(iterations=iterations, batch_real=s.batch_real, model=model, outer_loop=outer, inner_loop=inner)
    trajectory = dict(
        iterations=iterations,
        syn_steps=s.syn_steps,
        experts=experts_config(s),
        experts_dir=str(experts_dir),
        max_start_epoch=s.expert_epochs - s.ahead,
        expert_epochs=s.ahead,
    )
    if method == "mtt":
        return trajectory
    return dict(trajectory, batch_real=s.batch_real, soft_labels=False)


def time_method(
    method: str, data: Dataset, accel: AccelConfig, s: Settings, device: torch.device, experts_dir: Path, **extra
) -> list[float]:
    """Seconds of each timed iteration: differences of synchronised stamps taken after each one."""
    stamps = []

    def stamp(it, loss, seconds):
        _sync(device)
        stamps.append(time.perf_counter())

    distill(
        method,
        data,
        s.ipc,
        seed=0,
        device=device,
        progress=False,
        on_iteration=stamp,
        accel=accel,
        **method_options(method, s, experts_dir),
        **extra,
    )
    return [b - a for a, b in zip(stamps[s.warmup - 1 :], stamps[s.warmup :])]


def time_eval(data: Dataset, accel: AccelConfig, s: Settings, device: torch.device) -> list[float]:
    """Seconds of each timed epoch of a student on ipc real images per class, as train_student runs it."""
    gen = torch.Generator().manual_seed(0)
    run = Run(dataset=data, ipc=s.ipc, seed=0, device=device, progress=False, accel=accel)
    images, labels = init_synthetic(run, "real", gen)  # channels_last when accel asks
    net = maybe_compile(fresh_net(run, ModelConfig(width=s.width), gen), accel)
    labels, cfg, dsa, seconds = labels.to(device), TrainConfig(epochs=1), dsa_for(data.name), []
    for _ in range(s.warmup + s.repeats):
        _sync(device)
        start = time.perf_counter()
        with autocast(device, accel):
            train_network(net, images, labels, cfg, dsa, gen)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds[s.warmup :]


def speed_rows(parts: list[str], s: Settings, device: torch.device, out: Path) -> list[dict]:
    data, rows = random_cifar10(s.per_class), []
    experts_dir = out / "gpu_check_experts"
    if any(m in parts for m in ("mtt", "d3")):  # trained (or read) before any timing
        load_or_train_experts(data, experts_config(s), seed=0, device=device, root=experts_dir)
    for method in (m for m in METHODS + ("eval",) if m in parts):
        for name in PART_CONFIGS.get(method, ("a", "b")):
            print(f"timing {method} {name} ...", file=sys.stderr, flush=True)
            accel, extra = CONFIGS[name.split("+")[0]], ({"batch_classes": True} if name.endswith("+batched") else {})
            try:
                t = (
                    time_eval(data, accel, s, device)
                    if method == "eval"
                    else time_method(method, data, accel, s, device, experts_dir, **extra)
                )
                row = {"status": "ok", "median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
            except Exception as err:  # one failing option must not cost the rest of a GPU session
                traceback.print_exc()
                row = {"status": f"error: {type(err).__name__}: {err}"[:300]}
            rows.append({"table": "speed", "method": method, "config": name, "accel": repr(accel), **extra, **row})
    for r in rows:
        base = next((b for b in rows if b["method"] == r["method"] and b["config"] == "a"), None)
        if r.get("median_s") and base and base.get("median_s"):
            r["it_per_s"] = 1.0 / r["median_s"]
            r["speedup"] = base["median_s"] / r["median_s"]
    return rows


def accuracy_rows(s: Settings, device: torch.device) -> list[dict]:
    """DM IPC `s.ipc` on mnist5k, in a and in b, each set graded by acc_nets students in the same config."""
    data, rows = load_dataset("mnist5k"), []
    model = ModelConfig(width=s.width)
    for name in ("a", "b"):
        print(f"accuracy check {name} ...", file=sys.stderr, flush=True)
        accel = CONFIGS[name]
        try:
            start = time.perf_counter()
            syn = distill(
                "dm",
                data,
                s.ipc,
                seed=0,
                device=device,
                progress=False,
                accel=accel,
                iterations=s.acc_iterations,
                model=model,
            )
            cfg = EvalConfig(model=model, train=TrainConfig(epochs=s.acc_epochs), num_nets=s.acc_nets, accel=accel)
            summary = summarize(evaluate_synthetic(syn, data, cfg, seed=0, device=device)).iloc[0]
            row = {
                "status": "ok",
                "accuracy_mean": summary["accuracy_mean"],
                "accuracy_std": summary["accuracy_std"],
                "nets": int(summary["nets"]),
                "seconds": time.perf_counter() - start,
            }
        except Exception as err:
            traceback.print_exc()
            row = {"status": f"error: {type(err).__name__}: {err}"[:300]}
        rows.append({"table": "accuracy", "method": "dm", "config": name, "accel": repr(accel), **row})
    return rows


def print_tables(rows: list[dict], device_name: str) -> None:
    print(f"\n{device_name}: seconds per iteration (median), iterations/s and speed-up over fp32 (a)")
    print(f"{'method':<8}{'config':<8}{'median_s':>10}{'it/s':>10}{'speed-up':>10}  status")
    for r in (r for r in rows if r["table"] == "speed"):
        fmt = lambda k, f, r=r: format(r[k], f) if r.get(k) is not None else "-"  # noqa: E731
        print(
            f"{r['method']:<8}{r['config']:<8}{fmt('median_s', '.4f'):>10}{fmt('it_per_s', '.2f'):>10}"
            f"{fmt('speedup', '.2f'):>10}  {r['status']}"
        )
    acc = [r for r in rows if r["table"] == "accuracy"]
    if acc:
        print("\nDM on mnist5k, test accuracy of the students (percent, mean +- std over nets)")
        for r in acc:
            value = (
                f"{r['accuracy_mean']:.1f} +- {r['accuracy_std']:.1f} ({r['nets']} nets, {r['seconds']:.0f} s)"
                if r["status"] == "ok"
                else r["status"]
            )
            print(f"  {r['config']} {r['accel']}: {value}")
    print("configs: " + "; ".join(f"{k} = {v!r}" for k, v in CONFIGS.items()))


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="smoke test of the script; not a measurement")
    p.add_argument("--out", default="results/bench", help="folder of the CSV and the expert")
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device, s, out = resolve_device(args.device), TINY if args.tiny else Settings(), Path(args.out)
    if device.type == "cpu":  # one compile worker: the CPU may be shared with other jobs
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    began = time.perf_counter()
    rows = speed_rows(args.only, s, device, out)
    if "accuracy" in args.only:
        rows += accuracy_rows(s, device)
    for r in rows:
        r.update(device=name, torch=torch.__version__, tiny=args.tiny, width=s.width, ipc=s.ipc)
    print_tables(rows, name)
    path = out / f"gpu_check_{device.type}{'_tiny' if args.tiny else ''}.csv"
    write_csv(rows, path)
    print(f"\nwrote {path} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
