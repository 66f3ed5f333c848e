"""Training and prediction loops shared by evaluation, herding, DC's inner loop and experts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import DSAConfig, apply_dsa, sample_dsa
from .checks import check_int


@dataclass
class TrainConfig:
    """The field's student recipe (DC/DSA/DM/MTT reference code)."""

    epochs: int = 300  # 300 without DSA in the papers, 1000 with DSA/DM/MTT
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    decay_at_half: bool = True  # lr x 0.1 at half of the epochs
    chunk_size: int | None = None  # images per forward/backward pass within a batch (bounds memory;
    # the same gradient up to rounding); None: the whole batch at once

    def __post_init__(self):
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, low=1)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against hard class ids (N,) or soft targets (N, K)."""
    return F.cross_entropy(logits, targets)


Risk = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (per-sample losses, batch indices) -> scalar


Resample = Callable[[], tuple[torch.Tensor, torch.Tensor]]  # () -> fresh (images, labels) for an epoch


def set_epoch_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, epoch: int) -> None:
    """The recipe's schedule: cfg.lr, then cfg.lr x 0.1 from half of the epochs on (decay_at_half)."""
    if cfg.decay_at_half and epoch == cfg.epochs // 2 and epoch > 0:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.1


def augment_batch(x: torch.Tensor, dsa: DSAConfig | None, generator: torch.Generator) -> torch.Tensor:
    """One student batch under DSA: one family for the batch, parameters per image, drawn from
    `generator` (students.py draws through this too, so both loops use each stream alike)."""
    if dsa is None or not dsa.families:
        return x
    return apply_dsa(x, sample_dsa(dsa, x.shape[0], tuple(x.shape[-2:]), generator, same_family=True))


def train_network(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    dsa: DSAConfig | None,
    generator: torch.Generator,
    risk: Risk | None = None,
    resample: Resample | None = None,
) -> list[float]:
    """Train `net` in place with SGD on (images, labels); returns the mean loss of each epoch.

    Images and labels must already be on the net's device. DSA uses one family per batch and
    parameters per image, as the reference does when training students. `risk` replaces the
    mean of the per-sample losses (e.g. the robust risk over subpopulations). `resample`, when
    given, replaces (images, labels) at the start of every epoch (a generative set such as D3's
    shows fresh samples each epoch); it must keep their number.
    """
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    net.train()
    if (
        cfg.chunk_size is not None
        and cfg.chunk_size < min(cfg.batch_size, len(images))
        and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    ):
        raise ValueError(
            f"chunk_size={cfg.chunk_size} would change batch norm's statistics; use chunk_size=None with norm='batch'"
        )
    n, losses = images.shape[0], []
    for epoch in range(cfg.epochs):
        set_epoch_lr(opt, cfg, epoch)
        if resample is not None:
            images, labels = resample()
        perm = torch.randperm(n, generator=generator).to(images.device)
        total = 0.0
        for idx in perm.split(cfg.batch_size):
            x = augment_batch(images[idx], dsa, generator)
            opt.zero_grad(set_to_none=True)
            if cfg.chunk_size is not None and len(idx) > cfg.chunk_size:
                loss = chunked_backward(net, x, labels[idx], idx, risk, cfg.chunk_size)
            else:
                if risk is None:
                    loss = soft_cross_entropy(net(x), labels[idx])
                else:
                    loss = risk(F.cross_entropy(net(x), labels[idx], reduction="none"), idx)
                loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        losses.append(total / n)
    return losses


def chunked_backward(
    net: nn.Module, x: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor, risk: Risk | None, chunk: int
) -> torch.Tensor:
    """loss.backward() for one batch, `chunk` images at a time; returns the batch's loss.

    The loss is a function of the per-sample losses l (their mean, or `risk`), so its gradient
    is sum_i (d loss / d l_i) grad l_i: the weights d loss / d l_i come from the whole batch's
    losses, computed first without autograd (one extra forward; none for the mean, whose
    weights are 1/n), then each chunk's weighted losses are backpropagated and accumulate.
    """
    chunks = list(zip(x.split(chunk), targets.split(chunk)))
    if risk is None:
        loss, weights = None, x.new_full((len(x),), 1.0 / len(x))
    else:
        with torch.no_grad():
            losses = torch.cat([F.cross_entropy(net(xc), tc, reduction="none") for xc, tc in chunks])
        losses.requires_grad_(True)
        loss = risk(losses, idx)
        (weights,) = torch.autograd.grad(loss, losses)
    total = x.new_zeros(())
    for (xc, tc), wc in zip(chunks, weights.split(chunk)):
        per_sample = F.cross_entropy(net(xc), tc, reduction="none")
        (per_sample * wc).sum().backward()
        total = total + (per_sample.detach() * wc).sum()
    return total if loss is None else loss.detach()


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted class of each image, computed in eval mode in batches on the net's device."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    preds = [net(x.to(device)).argmax(1).cpu() for x in images.split(batch_size)]
    net.train(was_training)
    return torch.cat(preds)
