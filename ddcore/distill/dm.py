"""Distribution matching (DM, Zhao & Bilen, WACV 2023).

Each iteration draws a randomly initialised network and moves the synthetic images so that,
per class, their mean embedding matches the mean embedding of a real batch, both seen through
the same DSA draw. All classes go through the network in one batched forward.

Two robust objectives (DMConfig.robust; RobustConfig.dm_objective picks one), both documented as
equations in their functions, which work on embeddings so that ddcore.toy can call them too:
- 'cluster_means' (cluster_means_loss): the CVaR over a class's clusters of the distance between
  the class's mean synthetic embedding and each cluster's mean real embedding;
- 'double_layer' (double_layer_loss): each synthetic image answers for its own Voronoi cell of
  real images; CVaR within each cell, mean + max_weight x max across cells, plus plain DM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..accel import AccelConfig, amp_enabled, autocast
from ..augment import apply_dsa, dsa_for, sample_dsa
from ..checks import check_choice, check_float, check_int
from ..cluster import voronoi_cells
from ..fastpath import embed
from ..models import ModelConfig
from ..robust import RobustConfig, Subpopulations, cluster_cvars, cvar
from . import register_method
from .common import INITS, Run, class_indices, fresh_net, init_synthetic, make_set, optimize, sample_real


@dataclass
class DMConfig:
    iterations: int = 1000  # the reference runs 20,000; 1,000 is near its plateau on MNIST
    lr_img: float = 1.0  # SGD on the pixels, as the reference
    momentum: float = 0.5
    batch_real: int = 256  # real images per class per iteration
    init: str = "real"  # real | noise
    dsa: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    robust: RobustConfig | None = None  # our extension: robust.dm_objective, see the module docstring

    def __post_init__(self):
        check_int("iterations", self.iterations, low=0)
        check_float("lr_img", self.lr_img, low=0.0, low_open=True)
        check_float("momentum", self.momentum, low=0.0, high=1.0)
        check_int("batch_real", self.batch_real, low=1)
        check_choice("init", self.init, INITS)
        if self.robust is not None:
            self.robust.check_for_dm()


def class_means(features: torch.Tensor, groups: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean feature of each class: (N, D) features with class ids (N,) -> (num_classes, D)."""
    groups = groups.to(features.device)
    sums = torch.zeros(num_classes, features.shape[1], device=features.device, dtype=features.dtype)
    sums = sums.index_add(0, groups, features)
    counts = torch.bincount(groups, minlength=num_classes).clamp(min=1).to(features.dtype)
    return sums / counts[:, None]


def embed_features(net, x: torch.Tensor, accel: AccelConfig | None = None) -> torch.Tensor:
    """net.embed(x) as float32, computed under accel's autocast.

    fastpath.embed computes net.embed in cache-sized chunks with faster CPU kernels (same numbers).
    Under bf16 on the CPU the stock net.embed runs instead: fastpath's chunks run on worker
    threads, which do not inherit autocast (its state is per thread), and its Winograd transforms
    lose too much in bf16. On CUDA fastpath.embed is net.embed already.
    """
    stock = amp_enabled(accel) and not x.is_cuda
    with autocast(x.device, accel):
        out = net.embed(x) if stock else embed(net, x)
    return out.float()  # means and distances in fp32; a no-op without autocast


def mean_matching_loss(feat_real, groups_real, feat_syn, groups_syn, num_classes) -> torch.Tensor:
    """Plain DM on embeddings: L = sum_c ||mu_c - m_c||^2.

    mu_c, m_c: the mean real and mean synthetic embedding of class c; feat_* are (N, D) with class
    ids groups_* (N,). Classes absent from a side count with a zero mean.
    """
    mean_real = class_means(feat_real, groups_real, num_classes)
    mean_syn = class_means(feat_syn, groups_syn, num_classes)
    return ((mean_real - mean_syn) ** 2).sum()


def cluster_means_loss(
    feat_real, groups_real, cluster_ids, feat_syn, groups_syn, num_classes, alpha: float
) -> torch.Tensor:
    """The cluster-means robust objective: L = sum_c CVaR_alpha over k in K_c of ||m_c - mu_k||^2.

    K_c: the clusters (cluster_ids, unique across classes) of class c present in the batch; mu_k:
    the mean real embedding of cluster k; m_c: the mean synthetic embedding of class c.
    What it is: over the tail clusters T_c (the ceil(alpha |K_c|) farthest from m_c), its gradient
    in m_c is 2 (m_c - mean_{k in T_c} mu_k), so it is DM towards the unweighted average of the
    tail clusters' means, which weighs a rare cluster like a common one. It is not the paper's
    double-layer risk (no CVaR within a cluster; max_weight unused); see double_layer_loss.
    With one cluster per class it is mean_matching_loss.
    """
    groups_real = groups_real.to(feat_real.device)
    ids = cluster_ids.to(feat_real.device)
    num_clusters = int(ids.max()) + 1
    mean_cluster = class_means(feat_real, ids, num_clusters)  # (K, D)
    cluster_class = torch.zeros(num_clusters, dtype=torch.long, device=ids.device).scatter_(0, ids, groups_real)
    present = torch.bincount(ids, minlength=num_clusters) > 0
    mean_syn = class_means(feat_syn, groups_syn, num_classes)  # (C, D)
    dist = ((mean_cluster - mean_syn[cluster_class]) ** 2).sum(1)  # (K,)
    losses = [cvar(dist[present & (cluster_class == c)], alpha) for c in groups_real.unique().tolist()]
    return torch.stack(losses).sum()


def double_layer_loss(feat_real, groups_real, feat_syn, groups_syn, alpha: float, max_weight: float) -> torch.Tensor:
    """The double-layer robust risk over synthetic images' Voronoi cells (no plain DM term):

    L = sum_c [ mean_{j in J_c} CVaR_j + max_weight * max_{j in J_c} CVaR_j ],
    CVaR_j = CVaR_alpha { ||f(x_i) - f(s_j)||^2 : i in V_j },
    V_j: the real points of class c whose embedding is nearer to f(s_j) than to any other synthetic
    embedding of class c (ties: lowest j); J_c: the synthetic images of class c with a non-empty cell.
    An empty cell counts in neither the mean nor the max, so its image gets no gradient from this
    term (only from the plain DM term added by dm_double_layer_loss). Within its cell each image is
    pulled to the mean of its farthest real points; the worst cell is pulled harder.
    """
    groups_real = groups_real.to(feat_real.device)
    groups_syn = groups_syn.to(feat_real.device)
    cells = voronoi_cells(feat_real, groups_real, feat_syn.detach(), groups_syn)  # (N,) into the syn set
    dist = ((feat_real - feat_syn[cells]) ** 2).sum(1)  # (N,)
    cvars, present = cluster_cvars(dist, cells, alpha)  # (K,), K <= len(feat_syn)
    cell_class = groups_syn[: len(cvars)]
    num_classes = int(groups_syn.max()) + 1
    count = dist.new_zeros(num_classes).index_add(0, cell_class, present.to(dist.dtype))
    mean = dist.new_zeros(num_classes).index_add(0, cell_class, cvars * present) / count.clamp(min=1)
    worst = dist.new_full((num_classes,), float("-inf")).scatter_reduce(
        0, cell_class, cvars.masked_fill(~present, float("-inf")), "amax"
    )
    has = count > 0  # classes with real points
    return (mean[has] + max_weight * worst[has]).sum()


def _embed_pair(net, images_real, groups_real, images_syn, groups_syn, draw, accel):
    """(real embeddings without gradient, synthetic embeddings with it), both under the DSA draw."""
    with torch.no_grad():
        feat_real = embed_features(net, apply_dsa(images_real, draw, groups_real), accel)
    return feat_real, embed_features(net, apply_dsa(images_syn, draw, groups_syn), accel)


def dm_loss(
    net, images_real, groups_real, images_syn, groups_syn, num_classes, draw, accel: AccelConfig | None = None
) -> torch.Tensor:
    """Sum over classes of the squared distance between real and synthetic mean embeddings."""
    feat_real, feat_syn = _embed_pair(net, images_real, groups_real, images_syn, groups_syn, draw, accel)
    return mean_matching_loss(feat_real, groups_real, feat_syn, groups_syn, num_classes)


def dm_robust_loss(
    net,
    images_real,
    groups_real,
    images_syn,
    groups_syn,
    num_classes,
    draw,
    robust: RobustConfig,
    cluster_fn,
    accel: AccelConfig | None = None,
) -> torch.Tensor:
    """dm_objective='cluster_means': cluster_means_loss of the images' embeddings,
    L = sum_c CVaR_alpha over k in K_c of ||m_c - mu_k||^2.

    cluster_fn(features_real, features_syn) gives each real image a subpopulation id, unique
    across classes. With one subpopulation per class this is dm_loss.
    """
    feat_real, feat_syn = _embed_pair(net, images_real, groups_real, images_syn, groups_syn, draw, accel)
    ids = cluster_fn(feat_real, feat_syn.detach())
    return cluster_means_loss(feat_real, groups_real, ids, feat_syn, groups_syn, num_classes, robust.alpha)


def dm_double_layer_loss(
    net,
    images_real,
    groups_real,
    images_syn,
    groups_syn,
    num_classes,
    draw,
    robust: RobustConfig,
    accel: AccelConfig | None = None,
) -> torch.Tensor:
    """dm_objective='double_layer': plain DM plus the cell risk of double_layer_loss,
    L = sum_c ||mu_c - m_c||^2 + robust_weight * sum_c [mean_j CVaR_j + max_weight * max_j CVaR_j].

    The cells are the synthetic images' Voronoi cells in this iteration's embedding.
    """
    feat_real, feat_syn = _embed_pair(net, images_real, groups_real, images_syn, groups_syn, draw, accel)
    plain = mean_matching_loss(feat_real, groups_real, feat_syn, groups_syn, num_classes)
    cells = double_layer_loss(feat_real, groups_real, feat_syn, groups_syn, robust.alpha, robust.max_weight)
    return plain + robust.robust_weight * cells


@register_method("dm", DMConfig)
def distribution_matching(run: Run, cfg: DMConfig):
    gen = torch.Generator().manual_seed(run.seed)
    images_syn, labels_syn = init_synthetic(run, cfg.init, gen)
    images_syn.requires_grad_(True)
    opt = torch.optim.SGD([images_syn], lr=cfg.lr_img, momentum=cfg.momentum)
    per_class, dsa = class_indices(run), dsa_for(run.dataset.name) if cfg.dsa else None
    name = "dm+robust" if cfg.robust else "dm"
    subpops = Subpopulations(cfg.robust, run.seed) if cfg.robust else None

    def step(it: int) -> float:
        net = fresh_net(run, cfg.model, gen).requires_grad_(False)
        images_real, groups_real = sample_real(run, per_class, cfg.batch_real, gen)
        draw = sample_dsa(dsa, run.num_classes, run.dataset.im_size, gen) if dsa else None
        if cfg.robust is None:
            loss = dm_loss(net, images_real, groups_real, images_syn, labels_syn, run.num_classes, draw, run.accel)
        elif cfg.robust.dm_objective == "double_layer":
            loss = dm_double_layer_loss(
                net, images_real, groups_real, images_syn, labels_syn, run.num_classes, draw, cfg.robust, run.accel
            )
        else:

            def cluster_fn(feat_real, feat_syn):
                if cfg.robust.clustering == "synthetic":  # the nearest synthetic image of the class
                    return voronoi_cells(feat_real, groups_real, feat_syn, labels_syn)
                return subpops(it, net, images_real, groups_real.to(run.device))

            loss = dm_robust_loss(
                net,
                images_real,
                groups_real,
                images_syn,
                labels_syn,
                run.num_classes,
                draw,
                cfg.robust,
                cluster_fn,
                run.accel,
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    losses = optimize(run, name, cfg, cfg.iterations, step, {"images_syn": images_syn}, {"img": opt}, gen)
    return make_set(run, name, cfg, images_syn, labels_syn, losses)
