"""Gradient matching (DC, Zhao et al. ICLR 2021; with DSA, Zhao & Bilen ICML 2021).

Outer loop: on the current network, make the gradient of the loss on each class's synthetic
images point the way the gradient on a real batch of that class does (layer-wise cosine
distance). Inner loop: train the network a little on the synthetic set, so matching happens
along a training trajectory. A new random network starts every iteration.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ..accel import AccelConfig, autocast
from ..augment import apply_dsa, dsa_for, sample_dsa
from ..checks import check_choice, check_float, check_int
from ..models import ModelConfig
from ..robust import RobustConfig, Subpopulations, train_network_robust
from ..train import TrainConfig, train_network
from . import register_method
from .common import INITS, Run, class_indices, fresh_net, init_synthetic, make_set, optimize, sample_real

# The reference's (outer_loop, inner_loop) per ipc; other ipcs take the nearest listed ipc.
REFERENCE_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def default_loops(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) for any ipc: the reference table, nearest entry for others."""
    nearest = min(REFERENCE_LOOPS, key=lambda k: (abs(k - ipc), k))
    return REFERENCE_LOOPS[nearest]


@dataclass
class DCConfig:
    iterations: int = 1000            # the reference runs 1,000
    outer_loop: int | None = None     # None: default_loops(ipc)
    inner_loop: int | None = None
    lr_img: float = 0.1               # SGD on pixels, momentum 0.5 (reference)
    momentum: float = 0.5
    lr_net: float = 0.01              # inner-loop SGD on the network
    batch_real: int = 256             # real images per class per outer step
    batch_train: int = 256            # inner-loop batch of synthetic images
    init: str = "real"
    dsa: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    robust: RobustConfig | None = None  # robust distillation (Vahidian et al. 2025): see robust_train_step
    batch_classes: bool = False       # every class's gradients in one batched pass (torch.func.vmap):
                                      # the same loss, fewer and larger kernels (for GPUs; on the 2-core
                                      # CPU at width 128 an outer step takes 7.2-7.8 s instead of 5.6);
                                      # needs batch_real real images in every class

    def __post_init__(self):
        check_int("iterations", self.iterations, low=0)
        for name in ("outer_loop", "inner_loop"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low=1)
        check_float("lr_img", self.lr_img, low=0.0, low_open=True)
        check_float("lr_net", self.lr_net, low=0.0, low_open=True)
        check_int("batch_real", self.batch_real, low=1)
        check_choice("init", self.init, INITS)


def gradient_distance(grads_syn: list[torch.Tensor], grads_real: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers and output units of (1 - cosine) between gradient rows.

    Conv kernels are flattened per output channel; 1-D parameters (biases, norm affine) are
    skipped, as in the reference.
    """
    total = grads_syn[0].new_zeros(())
    for gs, gr in zip(grads_syn, grads_real):
        if gs.dim() == 1:
            continue
        gs, gr = gs.flatten(1), gr.flatten(1)
        total = total + (1 - F.cosine_similarity(gs, gr, dim=1, eps=1e-6)).sum()
    return total


def class_gradients(net, images, labels, create_graph: bool, accel: AccelConfig | None = None) -> list[torch.Tensor]:
    """Gradient of the mean cross-entropy on (images, labels) w.r.t. the network's parameters.

    Under accel's bf16 autocast only the forward is in bf16: the parameters stay fp32, so their
    gradients come out fp32, and the backward runs outside the region, as torch recommends.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    with autocast(images.device, accel):
        logits = net(images)
    loss = F.cross_entropy(logits.float(), labels)  # fp32 loss; a no-op without autocast
    return list(torch.autograd.grad(loss, params, create_graph=create_graph))


def batched_class_gradients(net, images, labels, create_graph: bool, accel: AccelConfig | None = None):
    """class_gradients of every class in one pass: images (C, n, ...) and labels (C, n) give, per
    parameter, a (C, *shape) tensor. Differentiable w.r.t. the images when create_graph is True."""
    params = {k: p.detach() for k, p in net.named_parameters() if p.requires_grad}

    def loss_fn(p, x, y):
        with autocast(x.device, accel):
            logits = functional_call(net, p, (x,))
        return F.cross_entropy(logits.float(), y)

    grads = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, images, labels)
    return [g if create_graph else g.detach() for g in grads.values()]


def match_step(run: Run, cfg: DCConfig, net, images_syn, labels_syn, per_class, dsa, gen) -> torch.Tensor:
    """One outer step's matching loss, summed over classes."""
    real, syn = [], []  # each class's batches under its own DSA draw
    for c in range(run.num_classes):
        images_real, _ = sample_real(run, per_class, cfg.batch_real, gen, classes=[c])
        draw = sample_dsa(dsa, 1, run.dataset.im_size, gen) if dsa else None
        real.append(apply_dsa(images_real, draw))
        syn.append(apply_dsa(images_syn[labels_syn == c], draw))
    loss = images_syn.new_zeros(())
    if cfg.batch_classes:
        sizes = [len(x) for x in real]
        if len(set(sizes)) > 1:
            raise ValueError(f"batch_classes=True needs batch_real={cfg.batch_real} real images in every class; "
                             f"the smallest has {min(sizes)}: lower batch_real or set batch_classes=False")
        targets = torch.arange(run.num_classes, device=run.device)[:, None]
        grads_real = batched_class_gradients(net, torch.stack(real), targets.expand(-1, sizes[0]), False, run.accel)
        grads_syn = batched_class_gradients(net, torch.stack(syn), targets.expand(-1, run.ipc), True, run.accel)
        for c in range(run.num_classes):
            loss = loss + gradient_distance([g[c] for g in grads_syn], [g[c] for g in grads_real])
        return loss
    for c in range(run.num_classes):
        target_real = torch.full((len(real[c]),), c, device=run.device)
        target_syn = torch.full((len(syn[c]),), c, device=run.device)
        grads_real = [g.detach() for g in class_gradients(net, real[c], target_real, False, run.accel)]
        grads_syn = class_gradients(net, syn[c], target_syn, True, run.accel)
        loss = loss + gradient_distance(grads_syn, grads_real)
    return loss


def robust_train_step(run: Run, cfg: DCConfig, net, images_syn, labels_syn, per_class, dsa, gen,
                      subpops: Subpopulations, it: int) -> None:
    """The robust method's extra step before matching: draw a real subsample T' per class, split
    it into subpopulations, and take one full-batch SGD step of the network on T' minimising the
    robust risk (CVaR within subpopulations, mean plus weighted max across them)."""
    images_real, labels_real = sample_real(run, per_class, cfg.batch_real, gen)
    labels_real = labels_real.to(run.device)
    ids = subpops(it, net, images_real, labels_real, images_syn.detach(), labels_syn)
    one_step = TrainConfig(epochs=1, lr=cfg.lr_net, momentum=0.0, weight_decay=0.0,
                           batch_size=len(images_real), decay_at_half=False, chunk_size=cfg.robust.chunk_size)
    train_network_robust(net, images_real, labels_real, ids, one_step, cfg.robust, dsa, gen)


@register_method("dc", DCConfig)
def gradient_matching(run: Run, cfg: DCConfig):
    gen = torch.Generator().manual_seed(run.seed)
    outer, inner = default_loops(run.ipc)
    outer, inner = cfg.outer_loop or outer, cfg.inner_loop or inner
    images_syn, labels_syn = init_synthetic(run, cfg.init, gen)
    images_syn.requires_grad_(True)
    labels_dev = labels_syn.to(run.device)
    opt = torch.optim.SGD([images_syn], lr=cfg.lr_img, momentum=cfg.momentum)
    per_class, dsa = class_indices(run), dsa_for(run.dataset.name) if cfg.dsa else None
    inner_cfg = TrainConfig(epochs=inner, lr=cfg.lr_net, momentum=0.0, weight_decay=0.0,
                            batch_size=cfg.batch_train, decay_at_half=False)

    name = "dc+robust" if cfg.robust else "dc"
    subpops = Subpopulations(cfg.robust, run.seed) if cfg.robust else None

    def step(it: int) -> float:
        net, total = fresh_net(run, cfg.model, gen), 0.0
        for ol in range(outer):
            if subpops is not None:
                robust_train_step(run, cfg, net, images_syn, labels_dev, per_class, dsa, gen, subpops, it)
            loss = match_step(run, cfg, net, images_syn, labels_dev, per_class, dsa, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            if ol < outer - 1:
                with autocast(run.device, run.accel):  # the inner loop's forwards; steps stay fp32
                    train_network(net, images_syn.detach(), labels_dev, inner_cfg, dsa, gen)
        return total / outer

    losses = optimize(run, name, cfg, cfg.iterations, step, {"images_syn": images_syn}, {"img": opt}, gen)
    return make_set(run, name, cfg, images_syn, labels_syn, losses)
