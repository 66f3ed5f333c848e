"""Students side by side: several networks of one architecture trained together, as one network.

`train_side_by_side` trains S networks exactly as `train.train_network` would train each of them,
one after the other, up to float rounding:
- their parameters are stacked along a new first dim (torch.func.stack_module_state), and one
  forward of all S runs through torch.func.vmap over functional_call of an empty copy of the
  architecture; student k's batch only ever meets student k's parameters;
- each student keeps its own torch.Generator: at every epoch it draws its own batch order, then
  for every batch its own DSA draw, in the order train_network draws them (both loops go
  through train.augment_batch), and its own fresh images when it has a `resample` hook;
- the summed loss sum_k mean-loss_k gives each student the gradient of its own mean loss, and
  SGD (momentum, weight decay, the lr decay at half) acts elementwise, so one optimizer over the
  stacked tensors is S optimizers.
Batch norm's running statistics are stacked buffers, so they stay per student too.

Where it is faster: on the CPU, not (see EvalConfig.side_by_side for the measurement): a student
epoch is dominated by the convolutions' arithmetic, which S students need S times whether their
convolutions run one after the other or as one grouped convolution. On a GPU the students' small
batches leave most of the device idle, so one launch for S of them should help: by design, not
measured here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from .augment import DSAConfig
from .train import Resample, TrainConfig, augment_batch, set_epoch_lr

Tensors = dict[str, torch.Tensor]


def train_side_by_side(
    nets: Sequence[nn.Module],
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
    dsa: DSAConfig | None,
    generators: Sequence[torch.Generator],
    resamples: Sequence[Resample | None] | None = None,
) -> list[list[float]]:
    """Train `nets` (one architecture, one device) in place, together, with SGD.

    Parameters
    ----------
    nets : the S networks; each ends as train_network(nets[k], *data[k], cfg, dsa,
        generators[k], resample=resamples[k]) would leave it, up to float rounding.
    data : each student's (images, labels) on the nets' device; labels are class ids (N,) or
        soft targets (N, K). The same tensors may be given to every student.
    cfg : the recipe; cfg.chunk_size is not supported when it would split a batch.
    dsa : the DSA settings, or None (no augmentation).
    generators : one per student: its batch order and DSA draws.
    resamples : optional per-student hooks giving fresh (images, labels) at every epoch.

    Returns
    -------
    The mean loss of each epoch, per student: S lists of cfg.epochs floats.
    """
    resamples = list(resamples) if resamples is not None else [None] * len(nets)
    _check(nets, data, generators, resamples, cfg)
    params, buffers = stack_module_state(list(nets))  # (S, ...) leaves that require grad
    forward = _stacked_forward(nets[0])
    opt = torch.optim.SGD(params.values(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history = []
    for epoch in range(cfg.epochs):
        set_epoch_lr(opt, cfg, epoch)
        data = [r() if r is not None else d for r, d in zip(resamples, data)]
        history.append(_epoch(forward, opt, params, buffers, data, cfg, dsa, generators))
    _unstack(nets, params, buffers)
    return torch.stack(history, 1).tolist()


def _check(nets, data, generators, resamples, cfg: TrainConfig) -> None:
    """Raise before training for what this loop does not do (rather than do it differently)."""
    if not len(nets) == len(data) == len(generators) == len(resamples):
        raise ValueError(
            f"{len(nets)} nets need as many data, generators and resamples; got "
            f"{len(data)}, {len(generators)} and {len(resamples)}"
        )
    n = len(data[0][0])
    if cfg.chunk_size is not None and cfg.chunk_size < min(cfg.batch_size, n):
        raise NotImplementedError(
            f"side_by_side does not support TrainConfig.chunk_size={cfg.chunk_size} "
            f"(< batch_size={cfg.batch_size}); use side_by_side=False or chunk_size=None"
        )


def _stacked_forward(net: nn.Module):
    """(params, buffers, x) -> logits (S, B, K) of S students, params and x stacked on dim 0."""
    template = copy.deepcopy(net).to("meta")  # the architecture only: the stack holds the numbers
    template.train()

    def one(p: Tensors, b: Tensors, x: torch.Tensor) -> torch.Tensor:
        return functional_call(template, (p, b), (x,))

    return vmap(one)


def _epoch(
    forward, opt, params: Tensors, buffers: Tensors, data, cfg: TrainConfig, dsa: DSAConfig | None, generators
) -> torch.Tensor:
    """One epoch of every student; returns each one's mean loss, (S,)."""
    n, device = len(data[0][0]), data[0][0].device
    if any(len(images) != n for images, _ in data):
        raise ValueError(f"side by side, every student needs as many images; got {[len(x) for x, _ in data]}")
    # per generator: the batch order first, then one DSA draw per batch, as in train_network
    perms = [torch.randperm(n, generator=g).to(device) for g in generators]
    total = torch.zeros(len(generators), device=device)
    for idx in zip(*(p.split(cfg.batch_size) for p in perms)):
        x = torch.stack([augment_batch(images[i], dsa, g) for (images, _), i, g in zip(data, idx, generators)])
        y = torch.stack([labels[i] for (_, labels), i in zip(data, idx)])  # (S, B) or (S, B, K)
        opt.zero_grad(set_to_none=True)
        losses = _mean_losses(forward(params, buffers, x), y)
        losses.sum().backward()  # student k's parameters only see loss k: its own gradient
        opt.step()
        total += losses.detach() * len(idx[0])
    return total / n


def _mean_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each student's mean cross-entropy, (S,), from logits (S, B, K) and targets (S, B) or (S, B, K)."""
    per_image = F.cross_entropy(logits.flatten(0, 1), y.flatten(0, 1), reduction="none")
    return per_image.view(logits.shape[:2]).mean(1)


@torch.no_grad()
def _unstack(nets: Sequence[nn.Module], params: Tensors, buffers: Tensors) -> None:
    """Copy student k's trained slice of the stack back into nets[k]."""
    stacked = {**params, **buffers}
    for k, net in enumerate(nets):
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            t.copy_(stacked[name][k])
