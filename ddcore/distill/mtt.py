"""Matching training trajectories (MTT, Cazenavette et al., CVPR 2022).

Each iteration picks an expert trajectory and a start epoch t, starts a student at the expert's
parameters theta*_t, takes `syn_steps` SGD steps on the synthetic images with a learnable step
size, and minimises ||theta_student - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2 (M =
`expert_epochs`). The gradient flows back through the unrolled steps to the images and the step
size. D3 uses the same loss on decoded images (`trajectory_matching_loss`).

Memory grows with syn_steps x the synthetic batch (every step's graph is kept); `batch_syn`
bounds it by using a random mini-batch of the synthetic images per step, as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..accel import AccelConfig, autocast
from ..augment import DSAConfig, apply_dsa, dsa_for, sample_dsa
from ..checks import check_float, check_int
from ..experts import ExpertConfig, forward_with, load_or_train_experts
from ..models import build_model
from . import register_method
from .common import INITS, Run, init_synthetic, make_set, optimize


@dataclass
class MTTConfig:
    iterations: int = 1000
    syn_steps: int = 10  # student steps on synthetic data per iteration (D3: 10; MTT: 10-80)
    expert_epochs: int = 2  # M: how far ahead of the start the target lies
    max_start_epoch: int = 10  # start epochs are drawn from 0..max_start_epoch
    lr_img: float = 100.0  # SGD on pixels, momentum 0.5 (MTT uses 100-1000 without ZCA)
    lr_lr: float = 1e-5  # SGD on the learnable student step size
    lr_init: float = 0.01  # initial student step size (the experts' lr)
    batch_syn: int | None = None  # synthetic images per student step; None: all (bounds memory)
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
        if self.batch_syn is not None:
            check_int("batch_syn", self.batch_syn, low=1)
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {self.init!r}")


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
    for _ in range(cfg.syn_steps):
        idx = torch.randperm(n, generator=generator)[:batch].to(images.device)
        x = images[idx]
        if dsa is not None and dsa.families:
            x = apply_dsa(x, sample_dsa(dsa, batch, tuple(x.shape[-2:]), generator, same_family=True))
        with autocast(images.device, accel):
            logits = forward_with(net, theta, x)
        loss = F.cross_entropy(logits.float(), labels[idx])  # fp32 loss; a no-op without autocast
        (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
        theta = theta - syn_lr * grad
    return ((theta - target) ** 2).sum() / ((start - target) ** 2).sum()


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
