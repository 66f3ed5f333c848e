"""Matching training trajectories (MTT, Cazenavette et al., CVPR 2022).

Each iteration picks an expert trajectory and a start epoch t, starts a student at the expert's
parameters theta*_t, takes `syn_steps` SGD steps on the synthetic images with a learnable step
size, and minimises ||theta_student - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2 (M =
`expert_epochs`). The gradient flows back through the unrolled steps to the images and the step
size. D3 uses the same loss on decoded images (`trajectory_matching_loss`).

Memory. Keeping the graph of every unrolled step costs about 2.6 MiB per image and step (width
128, 32x32): on the CIFAR-10 shape at IPC 50 and 10 steps MTT peaked at 13.3 GiB and D3 (500 means
and 500 draws per step) was killed for memory past 22 GiB. Two options bound it (bench/run.py's
memory rows, IPC 50, 1 thread on a loaded 2-core CPU, each in its own process):
- `recompute_steps`: a step keeps only its inputs (parameters and images) and the backward rebuilds
  its graph `recompute_chunk` images at a time (RecomputedStep). Exact: the same loss and gradients
  up to float rounding. One more forward and backward per step: 1.35-1.4x the time of keeping every
  graph (MTT: 189 s/it against 139 in one run; an interleaved A/B at 100 and 200 images: 1.40x and
  1.36x). torch.utils.checkpoint around each step bounded it less (7.6 GiB, 208 s/it).
- `batch_syn`: a random mini-batch of the synthetic images per step, the reference's option (its
  default is all of them). Faster (MTT, batch_syn 100: 26.9 s/it, 3.4 GiB), but each step sees a
  fifth of the set, so the objective is not the reference's default one; and D3 at batch_syn 100
  still peaked at 4.4 GiB (its decoder's graph for the 1,000 images comes on top).
The default, recompute_steps=None, keeps the graphs up to RECOMPUTE_ABOVE image-steps (syn_steps x
batch), where they fit and keeping is faster, and recomputes above: at IPC 50 MTT then peaks at
1.8 GiB and D3 at 2.9 GiB; the largest graphs kept, 1,000 image-steps (MTT at IPC 10, D3 at IPC 5),
peak at 3.4 and 3.5 GiB. recompute_steps=False keeps every graph at any size (the behaviour before
issue #17), True recomputes at any size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..accel import AccelConfig, autocast
from ..augment import DSAConfig, apply_dsa, dsa_for, sample_dsa
from ..checks import check_float, check_int
from ..experts import ExpertConfig, forward_with, load_or_train_experts
from ..models import build_model
from . import register_method
from .common import INITS, Run, init_synthetic, make_set, optimize

RECOMPUTE_ABOVE = 1_000  # student image-steps (syn_steps x batch) whose graphs are kept by default:
# at 1,000 MTT (IPC 10) peaks at 3.4 GiB and D3 (IPC 5) at 3.5 GiB on the CIFAR-10 shape


@dataclass
class MTTConfig:
    iterations: int = 1000
    syn_steps: int = 10  # student steps on synthetic data per iteration (D3: 10; MTT: 10-80)
    expert_epochs: int = 2  # M: how far ahead of the start the target lies
    max_start_epoch: int = 10  # start epochs are drawn from 0..max_start_epoch
    lr_img: float = 100.0  # SGD on pixels, momentum 0.5 (MTT uses 100-1000 without ZCA)
    lr_lr: float = 1e-5  # SGD on the learnable student step size
    lr_init: float = 0.01  # initial student step size (the experts' lr)
    batch_syn: int | None = None  # synthetic images per student step; None: all (the reference's default)
    recompute_steps: bool | None = None  # rebuild each step's graph in the backward (exact, bounds memory,
    # ~1.35x the time); None: when syn_steps x batch > RECOMPUTE_ABOVE (measured costs: module docstring)
    recompute_chunk: int = 128  # images per pass of a recomputed step (its graph is the backward's memory)
    init: str = "real"
    dsa: bool = True
    experts: ExpertConfig = field(default_factory=ExpertConfig)  # also fixes the student network
    experts_dir: str | None = None  # None: the checkpoint's folder, else trained in memory

    def __post_init__(self):
        check_int("iterations", self.iterations, low=0)
        check_int("syn_steps", self.syn_steps, low=1)
        check_int("expert_epochs", self.expert_epochs, low=1)
        check_int("max_start_epoch", self.max_start_epoch, low=0)
        if self.max_start_epoch + self.expert_epochs > self.experts.epochs:
            raise ValueError(
                f"max_start_epoch + expert_epochs = {self.max_start_epoch + self.expert_epochs} "
                f"must be <= experts.epochs = {self.experts.epochs}"
            )
        check_float("lr_img", self.lr_img, low=0.0, low_open=True)
        check_float("lr_init", self.lr_init, low=0.0, low_open=True)
        check_trajectory_memory(self)
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {self.init!r}")


def check_trajectory_memory(cfg) -> None:
    """batch_syn, recompute_steps and recompute_chunk, shared by MTTConfig and D3Config."""
    if cfg.batch_syn is not None:
        check_int("batch_syn", cfg.batch_syn, low=1)
    if cfg.recompute_steps is not None and not isinstance(cfg.recompute_steps, bool):
        raise TypeError(f"recompute_steps must be True, False or None, got {cfg.recompute_steps!r}")
    check_int("recompute_chunk", cfg.recompute_chunk, low=1)


def recomputes(cfg, batch: int) -> bool:
    """Whether the unrolled steps are recomputed in the backward: cfg.recompute_steps, or when it
    is None, whether the graphs of syn_steps steps on `batch` images would exceed RECOMPUTE_ABOVE."""
    if cfg.recompute_steps is not None:
        return cfg.recompute_steps
    return cfg.syn_steps * batch > RECOMPUTE_ABOVE


def cache_root(run: Run, experts_dir: str | None) -> str | Path | None:
    """Where experts and labellers are kept: experts_dir, else the checkpoint's folder, else nowhere."""
    return experts_dir if experts_dir is not None else (run.checkpoint.parent if run.checkpoint else None)


def experts_for(run: Run, cfg: ExpertConfig, experts_dir: str | None) -> list[torch.Tensor]:
    """The run's expert trajectories: from experts_dir, else the checkpoint's folder, else memory."""
    root = cache_root(run, experts_dir)
    return load_or_train_experts(
        run.dataset,
        cfg,
        seed=run.seed,
        device=run.device,
        root=Path(root) if root is not None else None,
        progress=run.progress,
    )


def trajectory_matching_loss(
    net,
    trajectories: list[torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    syn_lr: torch.Tensor,
    cfg,
    dsa: DSAConfig | None,
    generator: torch.Generator,
    accel: AccelConfig | None = None,
) -> torch.Tensor:
    """The normalised parameter distance after syn_steps student steps on (images, labels).

    cfg supplies syn_steps, expert_epochs, max_start_epoch and batch_syn; labels are class ids
    or soft targets. Under accel's bf16 autocast each step's forward runs in bf16; the flat
    parameters, their gradients and the distance stay fp32.
    """
    traj = trajectories[int(torch.randint(len(trajectories), (1,), generator=generator))]
    t = int(torch.randint(cfg.max_start_epoch + 1, (1,), generator=generator))
    start = traj[t].to(images.device)
    target = traj[t + cfg.expert_epochs].to(images.device)
    theta = start.clone().requires_grad_(True)
    n = images.shape[0]
    batch = n if cfg.batch_syn is None else min(cfg.batch_syn, n)
    recompute = recomputes(cfg, batch)
    for _ in range(cfg.syn_steps):
        idx = torch.randperm(n, generator=generator)[:batch].to(images.device)
        draw = None
        if dsa is not None and dsa.families:  # drawn here: a recomputed step must see the same draw
            draw = sample_dsa(dsa, batch, tuple(images.shape[-2:]), generator, same_family=True)
        if recompute:  # keeps only the step's inputs; its graph is rebuilt in the backward
            theta = RecomputedStep.apply(theta, images[idx], syn_lr, net, labels[idx], draw, accel, cfg.recompute_chunk)
        else:
            theta = student_step(net, theta, images[idx], labels[idx], syn_lr, draw, accel)
    return ((theta - target) ** 2).sum() / ((start - target) ** 2).sum()


def student_step(net, theta, x, y, syn_lr, draw, accel: AccelConfig | None) -> torch.Tensor:
    """One SGD step of the student on the batch (x, y) seen through the DSA draw: theta - syn_lr * grad,
    differentiable in theta, x and syn_lr (create_graph=True)."""
    x = apply_dsa(x, draw)
    with autocast(x.device, accel):
        logits = forward_with(net, theta, x)
    loss = F.cross_entropy(logits.float(), y)  # fp32 loss; a no-op without autocast
    (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
    return theta - syn_lr * grad


def _chunk_loss(net, theta, x, y, draw, accel, lo: int, n: int) -> torch.Tensor:
    """The student's loss on images lo:lo+len(x) of a step's n, as their share of the batch's mean."""
    x = apply_dsa(x, draw, torch.arange(lo, lo + x.shape[0]))
    with autocast(x.device, accel):
        logits = forward_with(net, theta, x)
    return F.cross_entropy(logits.float(), y[lo : lo + x.shape[0]], reduction="sum") / n


class RecomputedStep(torch.autograd.Function):
    """student_step keeping only its inputs: the forward takes the gradient without a graph, the
    backward rebuilds the step's graph `chunk` images at a time and differentiates it.

    Exact: forward_with refuses batch norm, so no image's gradient depends on another image and the
    batch's gradient is the sum of the chunks'. Costs one more forward and backward per step.
    """

    @staticmethod
    def forward(ctx, theta, x, syn_lr, net, y, draw, accel, chunk: int):
        ctx.save_for_backward(theta, x, syn_lr)
        ctx.rest = (net, y, draw, accel, chunk)
        n, at = x.shape[0], theta.detach().requires_grad_(True)
        grad = torch.zeros_like(theta)
        with torch.enable_grad():
            for lo in range(0, n, chunk):
                grad += torch.autograd.grad(_chunk_loss(net, at, x[lo : lo + chunk], y, draw, accel, lo, n), at)[0]
        return theta - syn_lr * grad

    @staticmethod
    @once_differentiable
    def backward(ctx, v):  # out = theta - syn_lr * (sum over chunks of g), v = dL/d(out)
        theta, x, syn_lr = ctx.saved_tensors
        net, y, draw, accel, chunk = ctx.rest
        n, at = x.shape[0], theta.detach().requires_grad_(True)
        grad_theta, grad_lr = v.clone(), torch.zeros_like(syn_lr)
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[1] else None
        with torch.enable_grad():
            for lo in range(0, n, chunk):
                x_part = x[lo : lo + chunk].detach().requires_grad_(grad_x is not None)
                (g,) = torch.autograd.grad(_chunk_loss(net, at, x_part, y, draw, accel, lo, n), at, create_graph=True)
                grad_lr -= (v * g.detach()).sum()
                inputs = (at, x_part) if grad_x is not None else (at,)
                grads = torch.autograd.grad(g, inputs, grad_outputs=-syn_lr.detach() * v)
                grad_theta += grads[0]
                if grad_x is not None:
                    grad_x[lo : lo + chunk] = grads[1]
        return grad_theta, grad_x, grad_lr, None, None, None, None, None


def student_network(run: Run, cfg: ExpertConfig, num_classes: int | None = None):
    """The architecture the experts were trained with; its own weights are never used."""
    return build_model(cfg.model, run.dataset.channels, num_classes or run.num_classes, run.dataset.im_size).to(
        run.device
    )


@register_method("mtt", MTTConfig)
def matching_training_trajectories(run: Run, cfg: MTTConfig):
    gen = torch.Generator().manual_seed(run.seed)
    trajectories = experts_for(run, cfg.experts, cfg.experts_dir)
    images_syn, labels_syn = init_synthetic(run, cfg.init, gen)
    labels_syn = labels_syn.to(run.device)
    images_syn.requires_grad_(True)
    syn_lr = torch.tensor(cfg.lr_init, device=run.device).requires_grad_(True)
    opt_img = torch.optim.SGD([images_syn], lr=cfg.lr_img, momentum=0.5)
    opt_lr = torch.optim.SGD([syn_lr], lr=cfg.lr_lr, momentum=0.5)
    net = student_network(run, cfg.experts)
    dsa = dsa_for(run.dataset.name) if cfg.dsa else None

    def step(it: int) -> float:
        loss = trajectory_matching_loss(net, trajectories, images_syn, labels_syn, syn_lr, cfg, dsa, gen, run.accel)
        opt_img.zero_grad(set_to_none=True)
        opt_lr.zero_grad(set_to_none=True)
        loss.backward()
        opt_img.step()
        opt_lr.step()
        with torch.no_grad():
            syn_lr.clamp_(min=1e-6)  # a negative step size would ascend the loss
        return loss.item()

    losses = optimize(
        run,
        "mtt",
        cfg,
        cfg.iterations,
        step,
        {"images_syn": images_syn, "syn_lr": syn_lr},
        {"img": opt_img, "lr": opt_lr},
        gen,
    )
    syn = make_set(run, "mtt", cfg, images_syn, labels_syn, losses)
    syn.meta["syn_lr"] = float(syn_lr.detach())
    return syn
