"""Seconds per iteration of every distillation method, and per epoch of evaluation training,
against the machine's own fp32 matmul rate (issue #7). Run by hand on a quiet machine, never in CI:

    python bench/run.py [--device cpu|cuda] [--quick] [--only dm dc ...] [--out results/bench]
                        [--threads N] [--repeats 5] [--shapes mnist5k] [--ipcs 1 10] [--tables main memory]
                        [--list] [--resume]

Workloads (printed with the results): `dm`, `dc`, `dc+robust` (RobustConfig() defaults: the
group-robust risk inside the matching target, dc_risk='target'; chunk_size only acts on the
paper's network step, dc_risk='network'), `mtt`,
`d3` (matching='mtt' plus MMD), `eval` (train_network, 1 epoch, TrainConfig() defaults, on a
synthetic set of ipc real images per class) and `eval-sbs` (the same epoch for the 3 students of
one evaluation trained side by side: students.train_side_by_side, EvalConfig.side_by_side; its
GFLOP/s compares with eval's, one student at a time), each with ConvNet-3 width 128 (instance norm),
256 real images per class, DSA on, IPC 1/10/50, at two shapes: `mnist5k` (the real data,
1x28x28) and `cifar10` (random N(0, 1) tensors, 3x32x32, 300 per class), 10 classes each.
DC uses the reference's (outer, inner) loops for the IPC; MTT and D3 their defaults (syn_steps
10, batch_syn None: every image in every student step, recompute_steps None: the steps' graphs
rebuilt in the backward above 1,000 image-steps, MTTConfig) with one 4-epoch expert trained before
any timing (max_start_epoch 2); D3 at IPC 1 decodes 2 samples per prior (its unbiased MMD needs 2
images per class) and skips the soft labels (made after the last iteration). A second table
(memory): MTT and D3 at IPC 10 for syn_steps 5/10/20 with batch_syn None (all 100 images) and 20,
every step's graph kept (recompute_steps=False); at the largest IPC, keeping every graph and
batch_syn 100, beside the main table's rows there (memory at the defaults); and dc+robust at the
largest IPC with its robust step in chunks of 256 (RobustConfig's default).

Timing: each workload runs in a fresh process (so that its peak memory is its own) and calls
`distill(..., iterations=warmup + repeats, on_iteration=...)`: the method's own loop reports the
seconds of each step; `eval` times train_network calls of 1 epoch each, `eval-sbs` train_side_by_side
calls of 1 epoch each (3 students). The first iteration is a
warm-up and is dropped; a row gives the median, min, max and IQR of 5 more, or of 3 when an
iteration exceeds 1 TFLOP (MTT and D3 at IPC 50, D3 at syn_steps 20). DC and DC+robust at IPC
10 and 50 (10 or 50 outer steps with 450 or 490 inner epochs: 2.5 to 15 minutes an iteration
here) time iterations of --dc-outer-cap (2) outer steps with the reference's inner loop, 3 of
them without warm-up (the first outer step warms the rest); est_full_s is the full iteration
at the same GFLOP/s (measured seconds x full GFLOP / capped GFLOP), and --dc-outer-cap 0 times
full iterations (one, above 5 TFLOP). The CSV records warmup and repeats per row; --list prints
the plan and a rough duration. --resume keeps the ok rows of an earlier run's CSV (same device,
threads and torch; its `run` column says when each row's process started) and times only the rest,
so that a full run can be spread over several quiet windows; the figure's title then says so. With
--only or --tables it retimes only that part of the plan and writes the CSV's other rows back as they were.
After the workload, the same process times torch.mm of two n x n fp32 matrices (n 2048, 4096 on
CUDA): 2 n^3 / the median of 7 after 2 warm-ups. The header's rate is the parent's, at start.

FLOPs: multiply-adds x 2 of the convolutions and linear layers only (ddcore.models.count_flops on
one image, times the images of each pass; norms, DSA, losses, cdist and the decoder's transposed
convolutions are not counted). With F a forward, F_embed a forward without the classifier and
F_1 the first convolution, per image:
- forward F; under no_grad too (DM's and D3's real images, clustering features);
- backward through the weights: 2F - F_1 (the images need no gradient, so the first layer's input
  gradient is skipped); through the inputs only (a frozen net: DM, the D3 feature net): F;
- a gradient taken with create_graph=True and then differentiated again (DC's synthetic
  gradients, each unrolled MTT step): 3F to build, 2 x 3F to differentiate: 9F in all. A
  recomputed MTT or D3 step (the CSV's `recomputed`) takes its first 3F twice; that 3F is not
  counted, so it shows as a lower ratio.
So: dm = F_embed (real + 2 syn); dc = outer x [(3F - F_1) real + 9F syn] + (outer - 1) x inner x
(3F - F_1) syn; dc+robust adds per outer step F_embed (real + syn) (each class's subpopulation ids
from the embeddings; with RobustConfig's default dc_risk 'target' the weighted real gradient replaces
plain DC's, at its cost), and with dc_risk 'network' or 'both' (3F - F_1) real more for the robust
network step; mtt =
9F x syn_steps x batch; d3 = mtt + F_embed (real + 2 decoded) + 3 decoder x decoded; eval =
(3F - F_1) syn; eval-sbs = 3 x eval. GFLOP/s = that count / median seconds, and ratio = GFLOP/s /
matmul GFLOP/s.

Keeping every MTT or D3 student step's graph costs about 2.1 MiB per image and step at width 128
on the mnist5k shape and 2.6 MiB on the CIFAR-10 shape (3.4 MiB was measured before the fused first
block and the allocator setting): at IPC 50 and syn_steps 10 MTT peaked at 13.3 GiB and D3 (500
means and 500 draws per step) was killed for memory past 22 GiB; their defaults recompute those
steps instead (MTTConfig, ddcore/distill/mtt.py's docstring). A worker that fails (e.g. killed for
memory) gives a row with its status and the run goes on.

Memory: on CPU the peak RSS of the workload's process during the timed call (VmHWM of
/proc/self/status, reset just before it; not ru_maxrss, which Linux carries over from the parent
across fork and exec); it includes what the process held before (setup_mib: the RSS then, about
0.65 GiB of torch, sklearn and data). On CUDA torch.cuda.max_memory_allocated over the timed call
(setup_mib: memory_allocated before it).

Outputs: a table on stdout, <out>/bench_<device>.csv (both tables, column `table`) and
figures/bench_<device>.png (+ .json, the settings) of seconds per iteration against IPC.
--quick checks that the script works; it is not a measurement: mnist5k shape, IPC 1 and 10,
width 32, 64 real images per class, DC loops capped at 2 x 2, syn_steps 2, 2 repeats, matmul
1024^2 median of 3; its CSV and figure go to <out>/bench_<device>_quick.*.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ddcore.augment import dsa_for
from ddcore.data import Dataset, load_dataset
from ddcore.decoder import Decoder, DecoderConfig
from ddcore.distill import distill
from ddcore.distill.common import Run, fresh_net, init_synthetic
from ddcore.distill.dc import default_loops
from ddcore.distill.mtt import recomputes
from ddcore.experts import ExpertConfig, load_or_train_experts
from ddcore.io import load_tensors, save_tensors
from ddcore.models import ConvNet, ModelConfig, count_flops
from ddcore.robust import RobustConfig
from ddcore.students import train_side_by_side
from ddcore.train import TrainConfig, train_network

METHODS = ("dm", "dm+robust", "dc", "dc+robust", "mtt", "d3", "d3+robust", "eval", "eval-sbs")
# each robust variant runs RobustConfig()'s defaults on its plain method's settings: the robust issue's
# objectives (DM: the double-layer risk over Voronoi cells; DC: the risk inside the matching target;
# D3: the MMD term as a CVaR over subpopulations), timed beside their plain rows


def base_method(method: str) -> str:
    """The plain method of a row: 'dm+robust' -> 'dm', 'dc+robust' -> 'dc'."""
    return method.removesuffix("+robust")


SIDE_BY_SIDE_NETS = 3  # eval-sbs: the students of one evaluation (EvalConfig.num_nets)
SHAPES = {"mnist5k": (1, (28, 28)), "cifar10": (3, (32, 32))}  # channels, im_size
NUM_CLASSES = 10
EXPERT_EPOCHS, EXPERT_AHEAD = 4, 2  # experts of 4 epochs; targets 2 epochs ahead of starts 0..2


@dataclass(frozen=True)
class Workload:
    """One row: what is timed, at which settings."""

    table: str  # main (time against ipc) | memory (mtt, d3 against syn_steps)
    method: str  # one of METHODS
    shape: str  # one of SHAPES
    ipc: int
    width: int = 128
    batch_real: int = 256  # real images per class per draw
    outer_loop: int | None = None  # dc, dc+robust: the outer steps timed (see dc_outer_cap)
    reference_outer: int | None = None  # the reference's outer loop, when the timed one is capped
    inner_loop: int | None = None
    syn_steps: int | None = None  # mtt, d3
    batch_syn: int | None = None  # mtt, d3: synthetic images per student step; None: all
    recompute_steps: bool | None = None  # mtt, d3: MTTConfig.recompute_steps; None: the config's rule
    samples_per_prior: int = 1  # d3
    robust_chunk: int | None = None  # dc+robust: RobustConfig.chunk_size (images per pass of its robust step)
    warmup: int = 1
    repeats: int = 5


@dataclass
class Settings:
    """What one run of this script measures; parse_settings fills it from the command line."""

    device: str = "cpu"  # cpu | cuda
    quick: bool = False  # a smoke test of the script (see the module docstring)
    methods: tuple[str, ...] = METHODS  # --only
    shapes: tuple[str, ...] = tuple(SHAPES)
    ipcs: tuple[int, ...] = (1, 10, 50)
    width: int = 128  # ConvNet-3 width, for every network
    batch_real: int = 256  # real images per class
    warmup: int = 1  # iterations run and dropped before the timed ones
    repeats: int = 5  # timed iterations (fewer for long ones, below)
    long_gflop: float = 1_000.0  # iterations above this: 3 repeats (mtt, d3 at ipc 50)
    heavy_gflop: float = 5_000.0  # above this: 1 timed iteration, no warm-up (dc at ipc >= 10)
    dc_max_loops: int | None = None  # cap on DC's outer and inner loops (quick)
    dc_outer_cap: int | None = 2  # DC's timed outer steps at ipc >= 10 (the inner loop is
    # the reference's): a full ipc-50 iteration is 50 of them,
    # about 15 minutes here; est_full_s scales by GFLOP
    memory_ipc: int = 10  # the memory table's ipc, syn_steps and bounded batch_syn
    memory_steps: tuple[int, ...] = (5, 10, 20)
    memory_batch_syn: int = 20
    large_batch_syn: int = 100  # the largest ipc's memory rows: batch_syn beside keeping all / recomputing
    robust_chunk: int = 256  # the memory table's dc+robust row: RobustConfig(chunk_size=...)
    threads: int = field(default_factory=torch.get_num_threads)
    matmul_n: int = 2048  # the reference matmul is n x n by n x n, fp32
    matmul_repeats: int = 7
    out: str = "results/bench"  # CSV, the workers' data files, the experts
    figure: str = ""  # set by parse_settings from device and quick
    tables: tuple[str, ...] = ("main", "memory")  # --tables: which of the two tables to run
    list_only: bool = False  # --list: print the plan, time nothing
    plot_only: str | None = None  # --plot-only CSV: redraw the figure, time nothing
    resume: bool = False  # --resume: keep the CSV's ok rows of this plan, time only the rest
    started: str = ""  # when this process started (UTC, ISO 8601): the CSV's `run`, so resumed rows show


def parse_settings(argv: list[str] | None = None) -> Settings:
    """Command line -> Settings; --quick changes the defaults it names in the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="a smoke test of this script, not a measurement")
    p.add_argument("--only", nargs="+", choices=METHODS, default=list(METHODS), help="methods to time")
    p.add_argument("--out", default="results/bench", help="folder of the CSV, data and experts")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=None, help="timed iterations per workload (5; quick 2)")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=None, help="a subset of the shapes")
    p.add_argument("--ipcs", nargs="+", type=int, default=None, help="a subset of the ipcs (default 1 10 50)")
    p.add_argument(
        "--dc-outer-cap",
        type=int,
        default=2,
        help="outer steps timed of DC's ipc >= 10 iterations (0: the reference's, 15+ min each)",
    )
    p.add_argument("--plot-only", metavar="CSV", help="redraw the figure from a CSV this script wrote")
    p.add_argument(
        "--tables",
        nargs="+",
        choices=["main", "memory"],
        default=["main", "memory"],
        help="main: every method at its defaults; memory: the memory options against syn_steps and ipc",
    )
    p.add_argument("--list", action="store_true", help="print the workloads and their GFLOP, time nothing")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of an earlier run's CSV (same device, threads and torch) and time only the "
        "workloads it lacks or failed: a full run spread over quiet windows",
    )
    args = p.parse_args(argv)
    s = Settings(
        plot_only=args.plot_only,
        device=args.device,
        quick=args.quick,
        methods=tuple(args.only),
        threads=args.threads,
        out=args.out,
        list_only=args.list,
        tables=tuple(args.tables),
        dc_outer_cap=args.dc_outer_cap or None,
        matmul_n=4096 if args.device == "cuda" else 2048,
        resume=args.resume,
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    if args.quick:
        s = dataclasses.replace(
            s,
            shapes=("mnist5k",),
            ipcs=(1, 10),
            width=32,
            batch_real=64,
            repeats=2,
            dc_max_loops=2,
            memory_steps=(2,),
            matmul_n=1024,
            matmul_repeats=3,
        )
    for name in ("repeats", "shapes", "ipcs"):
        if getattr(args, name) is not None:
            value = getattr(args, name)
            setattr(s, name, tuple(value) if isinstance(value, list) else value)
    # only a full run (every method, shape, ipc and table) redraws the tracked figures/bench_<device>.png;
    # a smoke test's or a subset's figure stays next to its CSV
    subset = (
        tuple(args.only) != METHODS
        or args.shapes is not None
        or args.ipcs is not None
        or tuple(args.tables) != ("main", "memory")
    )
    if s.quick or subset:
        s.figure = str(Path(s.out) / f"bench_{s.device}_{'quick' if s.quick else 'subset'}.png")
    else:
        s.figure = f"figures/bench_{s.device}.png"
    return s


# --- Workloads -------------------------------------------------------------------------------
def random_cifar10(per_class: int = 300, seed: int = 0) -> Dataset:
    """CIFAR-10's shape and normalisation with N(0, 1) pixels: enough for timing."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(NUM_CLASSES * (per_class + 10), 3, 32, 32, generator=gen)
    labels = torch.arange(NUM_CLASSES).repeat(per_class + 10)
    cut = NUM_CLASSES * per_class
    return Dataset(
        "cifar10_random",
        images[:cut],
        labels[:cut],
        images[cut:],
        labels[cut:],
        [f"class_{c}" for c in range(NUM_CLASSES)],
        (0.4914, 0.4822, 0.4465),
        (0.2023, 0.1994, 0.2010),
    )


def make_dataset(shape: str) -> Dataset:
    return load_dataset("mnist5k") if shape == "mnist5k" else random_cifar10()


def bench_experts(width: int) -> ExpertConfig:
    """One short expert: its trajectory has the right shape, which is all timing needs."""
    return ExpertConfig(num_experts=1, epochs=EXPERT_EPOCHS, model=ModelConfig(width=width))


def dc_loops(ipc: int, cap: int | None) -> tuple[int, int]:
    outer, inner = default_loops(ipc)
    return (outer, inner) if cap is None else (min(outer, cap), min(inner, cap))


def _row(s: Settings, table: str, method: str, shape: str, ipc: int, **kw) -> Workload:
    if method in ("dc", "dc+robust"):
        kw["outer_loop"], kw["inner_loop"] = dc_loops(ipc, s.dc_max_loops)
        if s.dc_outer_cap is not None and kw["outer_loop"] > s.dc_outer_cap:
            kw["reference_outer"], kw["outer_loop"] = kw["outer_loop"], s.dc_outer_cap
            kw.setdefault("warmup", 0)  # the first outer step warms the rest
            kw.setdefault("repeats", 3)
    if base_method(method) in ("mtt", "d3"):
        kw.setdefault("syn_steps", 10 if not s.quick else 2)
    if base_method(method) == "d3" and ipc == 1:
        kw["samples_per_prior"] = 2
    kw.setdefault("repeats", s.repeats)
    kw.setdefault("warmup", s.warmup)
    w = Workload(table, method, shape, ipc, s.width, s.batch_real, **kw)
    gflop = iteration_flops(w, per_image_flops(shape, s.width)) / 1e9
    if w.reference_outer is not None:
        return w
    if gflop > s.heavy_gflop:
        return dataclasses.replace(w, warmup=0, repeats=1)
    return dataclasses.replace(w, repeats=min(w.repeats, 3)) if gflop > s.long_gflop else w


def build_plan(s: Settings) -> list[Workload]:
    """The main table (every method, shape, ipc), then the memory table: mtt and d3 against
    syn_steps at memory_ipc, every step's graph kept; at the largest ipc, keeping every graph and a
    bounded batch_syn beside the main table's row (the default: recomputed steps); dc+robust in chunks."""
    plan = [_row(s, "main", m, shape, ipc) for shape in s.shapes for m in s.methods for ipc in s.ipcs]
    for shape in s.shapes:
        for m in (m for m in ("mtt", "d3") if m in s.methods):
            for steps in s.memory_steps:
                for batch_syn in (None, s.memory_batch_syn):
                    plan.append(
                        _row(
                            s,
                            "memory",
                            m,
                            shape,
                            s.memory_ipc,
                            syn_steps=steps,
                            batch_syn=batch_syn,
                            recompute_steps=False,
                            repeats=min(s.repeats, 3),
                        )
                    )
            for batch_syn in (None, s.large_batch_syn):  # the defaults' alternatives, where they matter most
                plan.append(_row(s, "memory", m, shape, max(s.ipcs), batch_syn=batch_syn, recompute_steps=False))
        if "dc+robust" in s.methods:  # its robust step trains on all 10 x batch_real images at once
            plan.append(_row(s, "memory", "dc+robust", shape, max(s.ipcs), robust_chunk=s.robust_chunk))
    return [w for w in plan if w.table in s.tables]


def method_options(w: Workload, experts_dir: str) -> tuple[str, dict]:
    """distill()'s method name and keyword options for a workload."""
    model, iterations = ModelConfig(width=w.width), w.warmup + w.repeats
    robust = RobustConfig() if w.method.endswith("+robust") else None
    if w.method in ("dm", "dm+robust"):
        return "dm", dict(iterations=iterations, batch_real=w.batch_real, model=model, dsa=True, robust=robust)
    if w.method in ("dc", "dc+robust"):
        return "dc", dict(
            iterations=iterations,
            batch_real=w.batch_real,
            model=model,
            dsa=True,
            outer_loop=w.outer_loop,
            inner_loop=w.inner_loop,
            robust=RobustConfig(chunk_size=w.robust_chunk) if w.method == "dc+robust" else None,
        )
    trajectory = dict(
        iterations=iterations,
        syn_steps=w.syn_steps,
        batch_syn=w.batch_syn,
        recompute_steps=w.recompute_steps,
        dsa=True,
        experts=bench_experts(w.width),
        experts_dir=experts_dir,
        max_start_epoch=EXPERT_EPOCHS - EXPERT_AHEAD,
        expert_epochs=EXPERT_AHEAD,
    )
    if w.method == "mtt":
        return "mtt", trajectory
    return "d3", dict(
        trajectory, batch_real=w.batch_real, samples_per_prior=w.samples_per_prior, soft_labels=False, robust=robust
    )


# --- FLOPs -----------------------------------------------------------------------------------
class _EmbedOnly(nn.Module):
    """count_flops runs forward(); this forward is the net's embed (no classifier)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.embed(x)


@functools.cache
def per_image_flops(shape: str, width: int) -> dict[str, int]:
    """count_flops of one image: forward, embed, first conv; and of one decoded image (D3)."""
    channels, im_size = SHAPES[shape]
    net, x = ConvNet(channels, NUM_CLASSES, im_size, width=width), torch.zeros(1, channels, *im_size)
    decoder = Decoder(DecoderConfig(), channels, im_size)
    return {
        "forward": count_flops(net, x),
        "embed": count_flops(_EmbedOnly(net), x),
        "first": count_flops(net.features[0], x),
        "decoder": count_flops(decoder, torch.zeros(2, DecoderConfig().latent_dim)) // 2,
    }


def iteration_flops(w: Workload, f: dict[str, int], real_per_class: int | None = None) -> int:
    """Conv + linear FLOPs of one iteration, by the rule in the module docstring."""
    fwd, emb = f["forward"], f["embed"]
    real = NUM_CLASSES * min(w.batch_real, real_per_class or w.batch_real)
    syn = NUM_CLASSES * w.ipc * w.samples_per_prior
    train = 3 * fwd - f["first"]  # forward + backward through the weights, images need no gradient
    if w.method == "eval":
        return train * syn
    if w.method == "eval-sbs":
        return SIDE_BY_SIDE_NETS * train * syn
    if w.method in ("dm", "dm+robust"):  # the robust terms add no convolutions
        return emb * (real + 2 * syn)
    if w.method in ("dc", "dc+robust"):
        per_outer = train * real + 9 * fwd * syn
        if w.method == "dc+robust":
            per_outer += emb * (real + syn)
            if RobustConfig().dc_risk != "target":  # the robust network step trains on the real batch
                per_outer += train * real
        return w.outer_loop * per_outer + (w.outer_loop - 1) * w.inner_loop * train * syn
    unrolled = 9 * fwd * w.syn_steps * min(w.batch_syn or syn, syn)
    if w.method == "mtt":
        return unrolled
    return unrolled + emb * (real + 2 * syn) + 3 * f["decoder"] * syn


# --- Measuring, in a fresh process per workload ----------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int, repeats: int = 7) -> float:
    """fp32 torch.mm of two n x n matrices: 2 n^3 / median seconds, after 2 warm-ups."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for r in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        if r >= 2:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def time_distill(w: Workload, data: Dataset, device: torch.device, experts_dir: str) -> list[float]:
    """Seconds of each timed iteration of the method's own loop (after the warm-up ones)."""
    seconds = []
    method, options = method_options(w, experts_dir)
    distill(
        method,
        data,
        w.ipc,
        seed=0,
        device=device,
        progress=False,
        on_iteration=lambda it, loss, s: seconds.append(s),
        **options,
    )
    return seconds[w.warmup :]


def time_eval(w: Workload, data: Dataset, device: torch.device) -> list[float]:
    """Seconds of each timed epoch of train_network on ipc real images per class (DSA on)."""
    gen = torch.Generator().manual_seed(0)
    run = Run(dataset=data, ipc=w.ipc, seed=0, device=device, progress=False)
    images, labels = init_synthetic(run, "real", gen)
    net, labels = fresh_net(run, ModelConfig(width=w.width), gen), labels.to(device)
    cfg, dsa, seconds = TrainConfig(epochs=1), dsa_for(data.name), []
    for _ in range(w.warmup + w.repeats):
        _sync(device)
        start = time.perf_counter()
        train_network(net, images, labels, cfg, dsa, gen)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds[w.warmup :]


def time_eval_side_by_side(w: Workload, data: Dataset, device: torch.device) -> list[float]:
    """Seconds of each timed epoch of SIDE_BY_SIDE_NETS students trained side by side, as time_eval."""
    run = Run(dataset=data, ipc=w.ipc, seed=0, device=device, progress=False)
    images, labels = init_synthetic(run, "real", torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(k) for k in range(SIDE_BY_SIDE_NETS)]
    nets = [fresh_net(run, ModelConfig(width=w.width), g) for g in gens]
    data_k, seconds = [(images, labels.to(device))] * SIDE_BY_SIDE_NETS, []
    for _ in range(w.warmup + w.repeats):
        _sync(device)
        start = time.perf_counter()
        train_side_by_side(nets, data_k, TrainConfig(epochs=1), dsa_for(data.name), gens)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds[w.warmup :]


def _status_mib(key: str) -> float | None:
    """A memory line of /proc/self/status (Linux) in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration):
        return None


def reset_peak(device: torch.device) -> float:
    """Start measuring the peak here; returns the memory in use now (MiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:  # '5' resets VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_mib("VmRSS") or 0.0


def peak_mib(device: torch.device) -> float:
    """Peak since reset_peak: max_memory_allocated on CUDA, VmHWM (peak RSS) on the CPU.

    Not ru_maxrss: Linux keeps it across fork and exec, so a worker would report its parent's
    peak (914 MiB in the first --quick runs, for every row)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_data(data: Dataset, path: Path) -> None:
    """The workload's data set, so that each worker reads tensors instead of running a loader."""
    keys = ("images_train", "labels_train", "images_test", "labels_test")
    save_tensors(
        path,
        {k: getattr(data, k) for k in keys},
        {"name": data.name, "class_names": data.class_names, "mean": data.mean, "std": data.std},
    )


def load_data(path: str) -> Dataset:
    t, meta = load_tensors(path)
    return Dataset(
        meta["name"],
        t["images_train"],
        t["labels_train"],
        t["images_test"],
        t["labels_test"],
        meta["class_names"],
        tuple(meta["mean"]),
        tuple(meta["std"]),
    )


def worker(payload: dict) -> dict:
    """Measure one workload in this (fresh) process; the parent reads the returned dict as JSON."""
    torch.set_num_threads(payload["threads"])
    device, w = torch.device(payload["device"]), Workload(**payload["workload"])
    data = load_data(payload["data"])
    setup = reset_peak(device)
    if w.method == "eval":
        seconds = time_eval(w, data, device)
    elif w.method == "eval-sbs":
        seconds = time_eval_side_by_side(w, data, device)
    else:
        seconds = time_distill(w, data, device, payload["experts_dir"])
    real_per_class = min(len(i) for i in data.indices_per_class("train"))
    flops = iteration_flops(w, per_image_flops(w.shape, w.width), real_per_class)
    peak = peak_mib(device)  # before the matmul, whose buffers would count otherwise
    return {
        "seconds": seconds,
        "gflop": flops / 1e9,
        "setup_mib": setup,
        "peak_mib": peak,
        "matmul_gflops": matmul_gflops(device, payload["matmul_n"], payload["matmul_repeats"]),
    }


def run_workload(w: Workload, s: Settings, data_path: Path, experts_dir: Path) -> dict | str:
    """The worker's measurements, or why it failed (e.g. killed for memory: the run goes on)."""
    payload = {
        "workload": dataclasses.asdict(w),
        "data": str(data_path),
        "experts_dir": str(experts_dir),
        "device": s.device,
        "threads": s.threads,
        "matmul_n": s.matmul_n,
        "matmul_repeats": s.matmul_repeats,
    }
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(payload)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        print(f"worker failed (exit code {proc.returncode}) for {w}:\n{proc.stderr[-2000:]}", flush=True)
        lines = proc.stderr.strip().splitlines()
        return f"failed: exit code {proc.returncode}" + (f", {lines[-1][:200]}" if lines else "")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare(s: Settings, plan: list[Workload], out: Path) -> tuple[dict[str, Path], Path]:
    """Save each shape's data for the workers and train the experts MTT and D3 load (untimed)."""
    paths, experts_dir = {}, out / "experts"
    for shape in dict.fromkeys(w.shape for w in plan):
        data = make_dataset(shape)
        paths[shape] = out / f"data_{shape}.safetensors"
        save_data(data, paths[shape])
        if any(w.shape == shape and base_method(w.method) in ("mtt", "d3") for w in plan):
            print(f"experts for {shape} (untimed; cached in {experts_dir})", flush=True)
            load_or_train_experts(data, bench_experts(s.width), seed=0, device=s.device, root=experts_dir)
    return paths, experts_dir


# --- Reporting -------------------------------------------------------------------------------
STATS = (
    "median_s",
    "min_s",
    "max_s",
    "iqr_s",
    "gflop",
    "gflops",
    "matmul_gflops",
    "ratio",
    "setup_mib",
    "peak_mib",
    "s_per_image_step",
    "est_full_s",
)


def recomputed(w: Workload) -> bool | None:
    """mtt, d3: whether the row's unrolled student steps are recomputed in the backward (the
    method's rule when recompute_steps is None); its batch is MTT's images, D3's means and draws."""
    if base_method(w.method) not in ("mtt", "d3"):
        return None
    n = NUM_CLASSES * w.ipc * (1 + w.samples_per_prior if w.method.startswith("d3") else 1)
    return recomputes(w, min(w.batch_syn or n, n))


def summarize(w: Workload, result: dict | str, s: Settings) -> dict:
    """One CSV row: the workload's settings and its statistics (empty if its worker failed)."""
    run_info = {"device": s.device, "threads": s.threads, "torch": torch.__version__, "run": s.started}
    settings = {**dataclasses.asdict(w), "recomputed": recomputed(w)}
    if isinstance(result, str):
        return {**settings, "status": result, **dict.fromkeys(STATS), **run_info}
    t = sorted(result["seconds"])
    q1, q3 = statistics.quantiles(t, n=4, method="inclusive")[::2] if len(t) > 1 else (t[0], t[0])
    med = statistics.median(t)
    gflops = result["gflop"] / med
    # MTT's cost per student image-step; D3's iteration also has a fixed MMD and decoder part
    images = w.syn_steps * min(w.batch_syn or 10 * w.ipc, 10 * w.ipc) if w.method == "mtt" else None
    est_full = None
    if w.reference_outer:  # a capped DC iteration: the full one at the same GFLOP/s
        f = per_image_flops(w.shape, w.width)
        est_full = (
            med * iteration_flops(dataclasses.replace(w, outer_loop=w.reference_outer), f) / (iteration_flops(w, f))
        )
    return {
        **settings,
        "status": "ok",
        "median_s": med,
        "min_s": t[0],
        "max_s": t[-1],
        "iqr_s": q3 - q1,
        "gflop": result["gflop"],
        "gflops": gflops,
        "matmul_gflops": result["matmul_gflops"],
        "ratio": gflops / result["matmul_gflops"],
        "setup_mib": result["setup_mib"],
        "peak_mib": result["peak_mib"],
        "s_per_image_step": med / images if images else None,
        "est_full_s": est_full,
        **run_info,
    }


def settings_label(r: dict) -> str:
    if r["outer_loop"]:
        of = f" of {r['reference_outer']}" if r.get("reference_outer") else ""
        chunk = f" chunk {r['robust_chunk']}" if r.get("robust_chunk") else ""
        return f"outer {r['outer_loop']}{of} inner {r['inner_loop']}{chunk}"
    if r["syn_steps"]:
        extra = f" x{r['samples_per_prior']}/prior" if r["samples_per_prior"] > 1 else ""
        redone = " recomp" if r.get("recomputed") in (True, "True") else ""  # "True" when read from a CSV
        return f"syn_steps {r['syn_steps']} batch_syn {r['batch_syn'] or 'all'}{extra}{redone}"
    return ""


ROW = "{:<10} {:<8} {:>3} {:<34} {:>9} {:>17} {:>9} {:>8} {:>7} {:>6} {:>8}"


def print_row(r: dict) -> None:
    if r["status"] != "ok":
        print(f"{r['method']:<10} {r['shape']:<8} {r['ipc']:>3} {settings_label(r):<34} {r['status']}", flush=True)
        return
    spread = f"{r['min_s']:.3g}-{r['max_s']:.3g}"
    print(
        ROW.format(
            r["method"],
            r["shape"],
            r["ipc"],
            settings_label(r),
            f"{r['median_s']:.3g}",
            spread,
            f"{r['gflop']:.4g}",
            f"{r['gflops']:.0f}",
            f"{r['matmul_gflops']:.0f}",
            f"{r['ratio']:.2f}",
            f"{r['peak_mib']:.0f}",
        ),
        flush=True,
    )


def robust_ratios(rows: list[dict]) -> list[tuple[str, str, int, float]]:
    """(robust method, shape, ipc, its median s/it over its plain method's) for the main table's rows
    where both ran; the robust issue's target is at most 1.5."""
    plain = {
        (r["method"], r["shape"], int(r["ipc"])): float(r["median_s"])
        for r in rows
        if r["table"] == "main" and r["status"] == "ok"
    }
    out = []
    for (method, shape, ipc), seconds in plain.items():
        base = base_method(method)
        if base != method and (base, shape, ipc) in plain:
            out.append((method, shape, ipc, seconds / plain[(base, shape, ipc)]))
    return out


def print_robust_ratios(rows: list[dict]) -> None:
    ratios = robust_ratios(rows)
    if ratios:
        print("\nrobust / plain, median seconds per iteration side by side in this run (target <= 1.5)")
    for method, shape, ipc, ratio in ratios:
        print(f"{method:<10} {shape:<8} ipc {ipc:>2}: {ratio:.2f}x")


def print_memory_table(rows: list[dict]) -> None:
    memory = [r for r in rows if r["table"] == "memory" and r["status"] == "ok"]
    trajectory = [r for r in memory if r["method"] in ("mtt", "d3")]
    if trajectory:  # the main table's rows at the largest ipc are the defaults the memory rows compare with
        largest = max(r["ipc"] for r in trajectory)
        trajectory += [
            r
            for r in rows
            if r["table"] == "main" and r["method"] in ("mtt", "d3") and r["status"] == "ok" and r["ipc"] == largest
        ]
        print(
            "\nMTT and D3: every step's graph kept against syn_steps, and at the largest ipc the defaults "
            "(main table) beside keeping every graph and a bounded batch_syn; peak MiB and its rise over the "
            "worker's set-up; ms/image-step = s/it / (syn_steps x batch), MTT only"
        )
        print(
            f"{'method':<6} {'shape':<8} {'ipc':>3} {'steps':>5} {'batch_syn':>9} {'graphs':>10} {'s/it':>8} "
            f"{'ms/image-step':>13} {'peak MiB':>9} {'+setup':>8}"
        )
    for r in trajectory:
        per_step = f"{1e3 * r['s_per_image_step']:.3g}" if r["s_per_image_step"] else "-"
        graphs = "recomputed" if r.get("recomputed") in (True, "True") else "kept"
        print(
            f"{r['method']:<6} {r['shape']:<8} {r['ipc']:>3} {r['syn_steps']:>5} {str(r['batch_syn'] or 'all'):>9} "
            f"{graphs:>10} {r['median_s']:>8.3g} {per_step:>13} {r['peak_mib']:>9.0f} "
            f"{r['peak_mib'] - r['setup_mib']:>8.0f}"
        )
    for r in memory:
        if r["method"] == "dc+robust":
            whole = [
                m
                for m in rows
                if m["table"] == "main"
                and m["method"] == "dc+robust"
                and m["status"] == "ok"
                and (m["shape"], m["ipc"]) == (r["shape"], r["ipc"])
            ]
            versus = f"; whole batch: {whole[0]['median_s']:.3g} s, {whole[0]['peak_mib']:.0f} MiB" if whole else ""
            print(
                f"dc+robust {r['shape']} ipc {r['ipc']}, robust step in chunks of {r['robust_chunk']}: "
                f"{r['median_s']:.3g} s/it, peak {r['peak_mib']:.0f} MiB{versus}"
            )


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV written by write_csv, with numbers as numbers (for --plot-only)."""

    def value(v: str):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v or None

    with open(path, newline="") as f:
        return [{k: value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def write_csv(rows: list[dict], path: Path) -> None:
    """Atomically (a temporary file renamed over the old one): an interrupted write loses no row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def workload_key(row: Workload | dict) -> tuple[str, ...]:
    """A workload's settings as text, equal for a Workload and its row read back from the CSV."""
    values = dataclasses.asdict(row) if isinstance(row, Workload) else row
    return tuple("" if values.get(f.name) is None else str(values.get(f.name)) for f in dataclasses.fields(Workload))


def resumed_rows(plan: list[Workload], csv_path: Path, s: Settings) -> tuple[list[dict], list[dict]]:
    """--resume: (the earlier CSV's ok rows of workloads in this plan, once each (the last kept); its rows
    of workloads outside this plan, as they were). The second list is written back unchanged, so that a
    run narrowed with --only or --tables loses none of the rows it did not time. Rows measured under
    another device, thread count or torch would not compare side by side: refused."""
    if not csv_path.exists():
        return [], []
    earlier = read_csv(csv_path)
    now = {"device": s.device, "threads": str(s.threads), "torch": torch.__version__}
    for r in earlier:
        then = {k: str(r.get(k)) for k in now}  # read_csv made the thread count a number
        if then != now:
            raise SystemExit(
                f"--resume: {csv_path} was measured with {then}, this run is {now}; "
                "rerun with the same --device, --threads and torch, or use another --out"
            )
    wanted = {workload_key(w) for w in plan}
    kept = {workload_key(r): r for r in earlier if r["status"] == "ok" and workload_key(r) in wanted}
    return list(kept.values()), [r for r in earlier if workload_key(r) not in wanted]


def full_plan_order(rows: list[dict], s: Settings) -> list[dict]:
    """rows in the order a full run (every method, shape, table and ipc) writes them, whichever part
    of it this run timed; rows of workloads outside it stay last, in their order."""
    full = build_plan(
        dataclasses.replace(
            s,
            methods=METHODS,
            shapes=tuple(SHAPES),
            tables=("main", "memory"),
            ipcs=tuple(sorted({*s.ipcs, 1, 10, 50})),
        )
    )
    order = {key: i for i, key in enumerate(map(workload_key, full))}
    return sorted(rows, key=lambda r: order.get(workload_key(r), len(order)))


def device_label(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"CPU {model} ({os.cpu_count()} cores)"


PLOT_LABELS = {
    "eval": "eval (1 epoch)",
    "dc": "dc (ipc >= 10: 2 of the reference's outer steps)",
    "dc+robust": "dc+robust (likewise)",
    "eval-sbs": f"eval side by side ({SIDE_BY_SIDE_NETS} students, 1 epoch)",
}
SHAPE_TITLES = {"mnist5k": "mnist5k (1x28x28, real images)", "cifar10": "CIFAR-10 shape (3x32x32, random)"}


def plot(rows: list[dict], s: Settings, label: str) -> Path:
    """Seconds per iteration against ipc: a line per method, a panel per shape, log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [r for r in rows if r["table"] == "main" and r["status"] == "ok"]
    shapes = [sh for sh in s.shapes if any(r["shape"] == sh for r in main)] or list(s.shapes[:1])
    fig, axes = plt.subplots(1, len(shapes), figsize=(max(7.0, 5.6 * len(shapes)), 4.8), squeeze=False, sharey=True)
    for ax, shape in zip(axes[0], shapes):
        for i, method in enumerate(METHODS):
            pts = sorted(
                (r["ipc"], r["median_s"], r["min_s"], r["max_s"])
                for r in main
                if r["shape"] == shape and r["method"] == method
            )
            if pts:
                x, med, lo, hi = map(list, zip(*pts))
                ax.errorbar(
                    x,
                    med,
                    yerr=[[m - a for m, a in zip(med, lo)], [b - m for m, b in zip(med, hi)]],
                    marker="o",
                    capsize=3,
                    color=f"C{i}",
                    label=PLOT_LABELS.get(method, method),
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(min(s.ipcs) / 1.5, max(s.ipcs) * 1.5)  # else one ipc (a subset) leaves a panel without a range
        ax.set_xticks(list(s.ipcs), [str(k) for k in s.ipcs])
        ax.minorticks_off()
        ax.set_xlabel("images per class")
        ax.set_title(SHAPE_TITLES[shape], fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("seconds per iteration (median; bars min-max)")
    axes[0][0].legend(fontsize=8)
    runs = sorted({str(r.get("run")) for r in main})
    spread = f"; rows from {len(runs)} runs ({runs[0]} to {runs[-1]}), --resume" if len(runs) > 1 else ""
    fig.suptitle(
        f"{label}\n{s.threads} thread{'s' if s.threads > 1 else ''}, torch {torch.__version__}{spread}"
        f"{'  [--quick: a smoke test, not a measurement]' if s.quick else ''}",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(s.figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    path.with_suffix(".json").write_text(json.dumps({**dataclasses.asdict(s), "device_label": label}, indent=1))
    return path


def print_plan(plan: list[Workload], rate: float) -> None:
    """--list: each workload's GFLOP and a rough duration at 1/3 of the matmul rate measured now."""
    total = 0.0
    for w in plan:
        gflop = iteration_flops(w, per_image_flops(w.shape, w.width)) / 1e9
        seconds = gflop * (w.warmup + w.repeats) / (rate / 3)
        total += seconds
        print(
            f"{w.table:<6} {w.method:<10} {w.shape:<8} ipc {w.ipc:>2}  {gflop:>10.1f} GFLOP/it  "
            f"{w.warmup}+{w.repeats} its  ~{seconds:>6.0f} s"
        )
    print(f"{len(plan)} workloads, roughly {total / 3600:.1f} h at 1/3 of {rate:.0f} GFLOP/s (plus set-up)")


def main(argv: list[str] | None = None) -> None:
    s = parse_settings(argv)
    torch.set_num_threads(s.threads)
    plan, label = build_plan(s), device_label(s.device)
    rate = matmul_gflops(torch.device(s.device), s.matmul_n, s.matmul_repeats)
    if s.list_only:
        return print_plan(plan, rate)
    if s.plot_only:
        return print(f"wrote {plot(read_csv(Path(s.plot_only)), s, label)}")
    out = Path(s.out)
    csv_path = out / f"bench_{s.device}{'_quick' if s.quick else ''}.csv"
    rows, outside_plan = resumed_rows(plan, csv_path, s) if s.resume else ([], [])
    done = {workload_key(r) for r in rows}
    todo = [w for w in plan if workload_key(w) not in done]
    paths, experts_dir = prepare(s, todo, out)
    memory = "peak RSS of the row's process" if s.device == "cpu" else "torch.cuda.max_memory_allocated"
    print(
        f"{label}, {s.threads} thread(s), torch {torch.__version__}; fp32 matmul {s.matmul_n}^2: {rate:.0f} GFLOP/s\n"
        "each row: its own process; median (min-max) seconds of the timed iterations after the warm-up "
        "(warmup, repeats: in the CSV); GFLOP of conv+linear per iteration; ratio = achieved GFLOP/s / "
        f"matmul GFLOP/s measured in the row's process; peak MiB = {memory} during the timed call"
    )
    print(
        ROW.format(
            "method",
            "shape",
            "ipc",
            "settings",
            "median s",
            "min-max s",
            "GFLOP",
            "GFLOP/s",
            "matmul",
            "ratio",
            "peak MiB",
        )
    )
    for r in rows:
        print_row(r)
    if rows:
        print(f"(kept {len(rows)} rows of {csv_path}, from runs started {sorted({str(r.get('run')) for r in rows})})")
    for w in todo:
        rows.append(summarize(w, run_workload(w, s, paths[w.shape], experts_dir), s))
        print_row(rows[-1])
        write_csv(full_plan_order(rows + outside_plan, s), csv_path)  # after every row: an interrupted run
        # keeps what it measured
    if not todo and outside_plan:
        write_csv(full_plan_order(rows + outside_plan, s), csv_path)
    print_robust_ratios(rows)
    print_memory_table(rows)
    if outside_plan:
        print(f"(carried {len(outside_plan)} rows of {csv_path} outside this plan through unchanged)")
    print(f"\nwrote {csv_path} and {plot(rows, s, label)}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        main()
