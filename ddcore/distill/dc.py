"""Gradient matching (DC, Zhao et al. ICLR 2021; with DSA, Zhao & Bilen ICML 2021).

Outer loop: on the current network, make the gradient of the loss on each class's synthetic
images point the way the gradient on a real batch of that class does (layer-wise cosine
distance). Inner loop: train the network a little on the synthetic set, so matching happens
along a training trajectory. A new random network starts every iteration.

Robust variant (DCConfig.robust, Vahidian et al. 2025), where RobustConfig.dc_risk says:
- 'target': each class's real target is the gradient of the group-robust risk of its real
  batch's per-sample losses (robust_class_gradients), so the synthetic gradients are asked to
  point where the worst subpopulations pull the network, not where the average image does;
- 'network': the paper's step, one SGD step of the network on the risk before each matching
  (robust_train_step); the target stays the mean loss's gradient;
- 'both'.
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
from ..robust import RobustConfig, Subpopulations, normalized_robust_risk, train_network_robust
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
    iterations: int = 1000  # the reference runs 1,000
    outer_loop: int | None = None  # None: default_loops(ipc)
    inner_loop: int | None = None
    lr_img: float = 0.1  # SGD on pixels, momentum 0.5 (reference)
    momentum: float = 0.5
    lr_net: float = 0.01  # inner-loop SGD on the network
    batch_real: int = 256  # real images per class per outer step
    batch_train: int = 256  # inner-loop batch of synthetic images
    init: str = "real"
    dsa: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    robust: RobustConfig | None = None  # robust distillation (Vahidian et al. 2025): robust.dc_risk says where
    # the risk acts (robust_class_gradients, robust_train_step)
    batch_classes: bool = False  # every class's gradients in one batched pass (torch.func.vmap):
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


def robust_class_gradients(
    net, images, labels, cluster_ids_fn, robust: RobustConfig, accel: AccelConfig | None = None
) -> list[torch.Tensor]:
    """The robust DC target: the gradient, w.r.t. the network's parameters, of the normalised
    group-robust risk of the per-sample cross-entropies of one class's real batch.

    target = d/dtheta [mean_k CVaR_alpha(l_k) + max_weight * max_k CVaR_alpha(l_k)] / (1 + max_weight),
    l_i = CE(net(x_i), y_i), l_k the losses of subpopulation k (robust.normalized_robust_risk).
    With one subpopulation and alpha = 1 this is class_gradients' mean-loss gradient.

    Parameters
    ----------
    cluster_ids_fn : callable
        (N, D) detached float embeddings of `images` (from this same forward) -> (N,) int64 ids.
    robust : RobustConfig
        alpha and max_weight of the risk.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    with autocast(images.device, accel):
        feats = net.embed(images)  # (N, D): the ids reuse them, so no extra forward
        logits = net.classifier(feats)
    losses = F.cross_entropy(logits.float(), labels, reduction="none")  # (N,)
    ids = cluster_ids_fn(feats.detach().float())
    risk = normalized_robust_risk(losses, ids, robust.alpha, robust.max_weight)
    return list(torch.autograd.grad(risk, params))


def class_ids_fn(
    subpops: Subpopulations,
    it: int,
    net,
    raw: torch.Tensor,
    syn: torch.Tensor,
    c: int,
    accel: AccelConfig | None = None,
):
    """For class c: embeddings of its augmented real batch -> subpopulation ids, as cfg.robust says.

    Voronoi cells compare them with the synthetic images' embeddings under the same DSA draw
    (`syn`, ipc images: a cheap forward); K-means in pixel space clusters the un-augmented
    images `raw`, as the robust network step does; K-means in embedding space uses them as given.
    """
    labels = torch.full((len(raw),), c, dtype=torch.long, device=raw.device)
    labels_syn = torch.full((len(syn),), c, dtype=torch.long, device=raw.device)

    def ids(feats: torch.Tensor) -> torch.Tensor:
        feats_syn = None
        if subpops.cfg.clustering == "synthetic":
            with torch.no_grad(), autocast(syn.device, accel):
                feats_syn = net.embed(syn.detach()).float()
        if subpops.cfg.cluster_space == "pixels":
            feats = raw.flatten(1)
        return subpops.from_features(it, net, feats, labels, feats_syn, labels_syn)

    return ids


def risk_weights(losses: torch.Tensor, cluster_ids: torch.Tensor, robust: RobustConfig) -> torch.Tensor:
    """d risk / d l_i for the normalised robust risk: the target is then d/dtheta sum_i w_i l_i.

    The risk is piecewise linear in the losses, so this weighted sum has the same gradient.
    """
    losses = losses.detach().requires_grad_(True)
    with torch.enable_grad():
        risk = normalized_robust_risk(losses, cluster_ids, robust.alpha, robust.max_weight)
        return torch.autograd.grad(risk, losses)[0]


def batched_class_gradients(
    net, images, labels, create_graph: bool, accel: AccelConfig | None = None, weights: torch.Tensor | None = None
):
    """class_gradients of every class in one pass: images (C, n, ...) and labels (C, n) give, per
    parameter, a (C, *shape) tensor. Differentiable w.r.t. the images when create_graph is True.
    weights (C, n), if given, replace the mean by sum_i w_i l_i (see risk_weights)."""
    params = {k: p.detach() for k, p in net.named_parameters() if p.requires_grad}

    def loss_fn(p, x, y, w):
        with autocast(x.device, accel):
            logits = functional_call(net, p, (x,))
        if w is None:
            return F.cross_entropy(logits.float(), y)
        return (F.cross_entropy(logits.float(), y, reduction="none") * w).sum()

    in_w = None if weights is None else 0
    grads = vmap(grad(loss_fn), in_dims=(None, 0, 0, in_w))(params, images, labels, weights)
    return [g if create_graph else g.detach() for g in grads.values()]


def batched_risk_weights(
    net, real: torch.Tensor, targets: torch.Tensor, ids_fns, robust: RobustConfig, accel: AccelConfig | None = None
) -> torch.Tensor:
    """risk_weights of every class, (C, n), from one no-grad forward of all real batches (C, n, ...).

    vmap cannot run the risk itself (its sort and bincount have data-dependent shapes), so the
    batched path pays this extra forward; the loop path needs none.
    """
    with torch.no_grad(), autocast(real.device, accel):
        feats = net.embed(real.flatten(0, 1))
        logits = net.classifier(feats)
    losses = F.cross_entropy(logits.float(), targets.flatten(), reduction="none").view(targets.shape)
    feats = feats.float().view(*targets.shape, -1)
    return torch.stack([risk_weights(losses[c], ids_fns[c](feats[c]), robust) for c in range(len(real))])


def class_batches(run: Run, cfg: DCConfig, images_syn, labels_syn, per_class, dsa, gen):
    """Per class: a real batch as drawn, the same under a DSA draw, and the synthetic images under it."""
    raw, real, syn = [], [], []
    for c in range(run.num_classes):
        images_real, _ = sample_real(run, per_class, cfg.batch_real, gen, classes=[c])
        draw = sample_dsa(dsa, 1, run.dataset.im_size, gen) if dsa else None
        raw.append(images_real)
        real.append(apply_dsa(images_real, draw))
        syn.append(apply_dsa(images_syn[labels_syn == c], draw))
    return raw, real, syn


def match_step(
    run: Run,
    cfg: DCConfig,
    net,
    images_syn,
    labels_syn,
    per_class,
    dsa,
    gen,
    subpops: Subpopulations | None = None,
    it: int = 0,
) -> torch.Tensor:
    """One outer step's matching loss, summed over classes.

    With `subpops` the real target of each class is robust_class_gradients' (ids from `subpops`
    at step `it`), else the gradient of the mean cross-entropy.
    """
    raw, real, syn = class_batches(run, cfg, images_syn, labels_syn, per_class, dsa, gen)
    ids_fns = (
        None
        if subpops is None
        else [class_ids_fn(subpops, it, net, raw[c], syn[c], c, run.accel) for c in range(run.num_classes)]
    )
    if cfg.batch_classes:
        return _batched_match(run, cfg, net, real, syn, ids_fns)
    loss = images_syn.new_zeros(())
    for c in range(run.num_classes):
        target_real = torch.full((len(real[c]),), c, device=run.device)
        target_syn = torch.full((len(syn[c]),), c, device=run.device)
        if ids_fns is None:
            grads_real = class_gradients(net, real[c], target_real, False, run.accel)
        else:
            grads_real = robust_class_gradients(net, real[c], target_real, ids_fns[c], cfg.robust, run.accel)
        grads_real = [g.detach() for g in grads_real]
        grads_syn = class_gradients(net, syn[c], target_syn, True, run.accel)
        loss = loss + gradient_distance(grads_syn, grads_real)
    return loss


def _batched_match(run: Run, cfg: DCConfig, net, real, syn, ids_fns) -> torch.Tensor:
    """match_step's loss with every class's gradients in one vmap pass (cfg.batch_classes)."""
    sizes = [len(x) for x in real]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"batch_classes=True needs batch_real={cfg.batch_real} real images in every class; "
            f"the smallest has {min(sizes)}: lower batch_real or set batch_classes=False"
        )
    real, syn = torch.stack(real), torch.stack(syn)
    classes = torch.arange(run.num_classes, device=run.device)[:, None]
    targets_real, targets_syn = classes.expand(-1, sizes[0]), classes.expand(-1, run.ipc)
    weights = None if ids_fns is None else batched_risk_weights(net, real, targets_real, ids_fns, cfg.robust, run.accel)
    grads_real = batched_class_gradients(net, real, targets_real, False, run.accel, weights)
    grads_syn = batched_class_gradients(net, syn, targets_syn, True, run.accel)
    loss = syn.new_zeros(())
    for c in range(run.num_classes):
        loss = loss + gradient_distance([g[c] for g in grads_syn], [g[c] for g in grads_real])
    return loss


def robust_train_step(
    run: Run, cfg: DCConfig, net, images_syn, labels_syn, per_class, dsa, gen, subpops: Subpopulations, it: int
) -> None:
    """The paper's robust step before matching (dc_risk 'network' or 'both'): draw a real subsample
    T' per class, split it into subpopulations, and take one full-batch SGD step of the network on
    T' minimising the robust risk (CVaR within subpopulations, mean plus weighted max across them)."""
    images_real, labels_real = sample_real(run, per_class, cfg.batch_real, gen)
    labels_real = labels_real.to(run.device)
    ids = subpops(it, net, images_real, labels_real, images_syn.detach(), labels_syn)
    one_step = TrainConfig(
        epochs=1,
        lr=cfg.lr_net,
        momentum=0.0,
        weight_decay=0.0,
        batch_size=len(images_real),
        decay_at_half=False,
        chunk_size=cfg.robust.chunk_size,
    )
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
    inner_cfg = TrainConfig(
        epochs=inner, lr=cfg.lr_net, momentum=0.0, weight_decay=0.0, batch_size=cfg.batch_train, decay_at_half=False
    )

    name = "dc+robust" if cfg.robust else "dc"
    subpops = Subpopulations(cfg.robust, run.seed) if cfg.robust else None
    network_risk = cfg.robust is not None and cfg.robust.dc_risk in ("network", "both")
    target_risk = cfg.robust is not None and cfg.robust.dc_risk in ("target", "both")

    def step(it: int) -> float:
        net, total = fresh_net(run, cfg.model, gen), 0.0
        for ol in range(outer):
            if network_risk:
                robust_train_step(run, cfg, net, images_syn, labels_dev, per_class, dsa, gen, subpops, it)
            loss = match_step(
                run, cfg, net, images_syn, labels_dev, per_class, dsa, gen, subpops if target_risk else None, it
            )
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
