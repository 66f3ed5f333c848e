"""Distribution matching (DM, Zhao & Bilen, WACV 2023).

Each iteration draws a randomly initialised network and moves the synthetic images so that,
per class, their mean embedding matches the mean embedding of a real batch, both seen through
the same DSA draw. All classes go through the network in one batched forward.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..accel import AccelConfig, amp_enabled, autocast
from ..augment import apply_dsa, dsa_for, sample_dsa
from ..fastpath import embed
from ..checks import check_choice, check_float, check_int
from ..cluster import voronoi_cells
from ..models import ModelConfig
from ..robust import RobustConfig, Subpopulations, cvar
from . import register_method
from .common import INITS, Run, class_indices, fresh_net, init_synthetic, make_set, optimize, sample_real


@dataclass
class DMConfig:
    iterations: int = 1000    # the reference runs 20,000; 1,000 is near its plateau on MNIST
    lr_img: float = 1.0       # SGD on the pixels, as the reference
    momentum: float = 0.5
    batch_real: int = 256     # real images per class per iteration
    init: str = "real"        # real | noise
    dsa: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    robust: RobustConfig | None = None  # our extension: CVaR over each class's subpopulations

    def __post_init__(self):
        check_int("iterations", self.iterations, low=0)
        check_float("lr_img", self.lr_img, low=0.0, low_open=True)
        check_float("momentum", self.momentum, low=0.0, high=1.0)
        check_int("batch_real", self.batch_real, low=1)
        check_choice("init", self.init, INITS)


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


def dm_loss(net, images_real, groups_real, images_syn, groups_syn, num_classes, draw,
            accel: AccelConfig | None = None) -> torch.Tensor:
    """Sum over classes of the squared distance between real and synthetic mean embeddings."""
    with torch.no_grad():
        feat_real = embed_features(net, apply_dsa(images_real, draw, groups_real), accel)
        mean_real = class_means(feat_real, groups_real, num_classes)
    feat_syn = embed_features(net, apply_dsa(images_syn, draw, groups_syn), accel)
    mean_syn = class_means(feat_syn, groups_syn, num_classes)
    return ((mean_real - mean_syn) ** 2).sum()


def dm_robust_loss(net, images_real, groups_real, images_syn, groups_syn, num_classes, draw,
                   robust: RobustConfig, cluster_fn, accel: AccelConfig | None = None) -> torch.Tensor:
    """Sum over classes of the CVaR, over the class's subpopulations, of the squared distance
    between the class's synthetic mean embedding and the subpopulation's real mean embedding.

    cluster_fn(features_real, features_syn) gives each real image a subpopulation id, unique
    across classes. With one subpopulation per class this is dm_loss.
    """
    with torch.no_grad():
        feat_real = embed_features(net, apply_dsa(images_real, draw, groups_real), accel)
    feat_syn = embed_features(net, apply_dsa(images_syn, draw, groups_syn), accel)
    groups_real = groups_real.to(feat_real.device)
    ids = cluster_fn(feat_real, feat_syn.detach())
    num_clusters = int(ids.max()) + 1
    mean_cluster = class_means(feat_real, ids, num_clusters)                  # (K, D)
    cluster_class = torch.zeros(num_clusters, dtype=torch.long, device=ids.device).scatter_(0, ids, groups_real)
    present = torch.bincount(ids, minlength=num_clusters) > 0
    mean_syn = class_means(feat_syn, groups_syn, num_classes)                 # (C, D)
    dist = ((mean_cluster - mean_syn[cluster_class]) ** 2).sum(1)            # (K,)
    losses = [cvar(dist[present & (cluster_class == c)], robust.alpha) for c in groups_real.unique().tolist()]
    return torch.stack(losses).sum()


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
            loss = dm_loss(net, images_real, groups_real, images_syn, labels_syn, run.num_classes, draw,
                           run.accel)
        else:
            def cluster_fn(feat_real, feat_syn):
                if cfg.robust.clustering == "synthetic":  # the nearest synthetic image of the class
                    return voronoi_cells(feat_real, groups_real, feat_syn, labels_syn)
                return subpops(it, net, images_real, groups_real.to(run.device))
            loss = dm_robust_loss(net, images_real, groups_real, images_syn, labels_syn, run.num_classes,
                                  draw, cfg.robust, cluster_fn, run.accel)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    losses = optimize(run, name, cfg, cfg.iterations, step, {"images_syn": images_syn}, {"img": opt}, gen)
    return make_set(run, name, cfg, images_syn, labels_syn, losses)
