"""A 2-D toy of robust distribution matching: what reaches a rare mode, and why.

Each class is a Gaussian mixture in the plane: a common mode and a rare one (90% / 10% by
default). A "network" is a map of random ReLU features, phi(x) = relu(W x + b) with W, b ~ N(0, 1),
drawn afresh every iteration, as DM draws a fresh ConvNet. A few synthetic points per class are
then moved by gradient descent on one of DM's objectives, computed by the SAME functions as
ddcore/distill/dm.py (they work on embeddings, and here the embedding is phi):
- plain DM, `mean_matching_loss`: the points' mean feature matches the class's, so they settle
  where the mixture's mass is, in the common mode;
- 'cluster_means', `cluster_means_loss`: DM towards the average of the clusters' means, which
  weighs the rare cluster like the common one;
- 'double_layer', plain DM + `double_layer_loss`: each point answers for the real points of its
  own Voronoi cell, the far ones (CVaR) and the worst cell most.

`distill_toy` returns the points' trajectories; `robust_plots.toy_plot` draws them.

The same toy for gradient matching (DC), `distill_toy_dc`: the "network" is phi followed by a
linear layer theta (C, F) drawn afresh too, and the points move to minimise DC's distance
(`dc.gradient_distance`: per class, sum over theta's rows of 1 - cos) between the gradient in theta of
their cross-entropy and the real points' target gradient:
- plain DC: the gradient of the mean cross-entropy of the class's real points;
- robust target (RobustConfig(dc_risk='target')): the gradient of `normalized_robust_risk` of their
  per-point cross-entropies over the class's subpopulations (as `dc.robust_class_gradients`), which
  weighs the rare mode like the common one, so some points move towards it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_choice, check_float, check_int
from .distill.dc import gradient_distance
from .distill.dm import cluster_means_loss, double_layer_loss, mean_matching_loss
from .robust import RobustConfig, Subpopulations, normalized_robust_risk

__all__ = [
    "ToyConfig",
    "ToyData",
    "ToyRun",
    "OBJECTIVES",
    "make_toy",
    "random_features",
    "toy_loss",
    "distill_toy",
    "DC_OBJECTIVES",
    "toy_dc_loss",
    "distill_toy_dc",
    "run_toy",
    "distance_to_rare",
]

# The objectives the toy compares, by the name its figure shows. K-means runs in the plane (the
# toy's 'pixels'). The double layer's cell term is stiffer than the plain term (each image answers
# for a whole cell, the worst one with weight max_weight): at ToyConfig's lr, robust_weight 0.5
# diverges and 0.2 is stable for every seed tried (0-5).
OBJECTIVES: dict[str, RobustConfig | None] = {
    "plain DM (mean matching)": None,
    "cluster means, Voronoi cells": RobustConfig(dm_objective="cluster_means", clustering="synthetic"),
    "cluster means, K-means k=2": RobustConfig(dm_objective="cluster_means", clustering="kmeans", k=2, space="pixels"),
    "double layer": RobustConfig(dm_objective="double_layer", robust_weight=0.2),
}

# DC's target on the toy: plain, and the group-robust risk over K-means k=2 clusters of each class in
# the plane (the rare mode is far from the common one, so k=2 finds it); alpha and max_weight: defaults.
DC_OBJECTIVES: dict[str, RobustConfig | None] = {
    "plain DC (mean-loss target)": None,
    "DC, robust target (K-means k=2)": RobustConfig(dc_risk="target", clustering="kmeans", k=2, space="pixels"),
}


@dataclass
class ToyConfig:
    num_classes: int = 2  # classes; their common modes sit evenly on a circle
    n_per_class: int = 400  # real points per class
    rare_fraction: float = 0.1  # share of each class in its rare mode
    radius: float = 2.0  # distance of each common mode from the origin
    rare_offset: float = 3.0  # distance from a class's common mode to its rare mode (at a right angle)
    spread: float = 0.3  # standard deviation of every mode
    ipc: int = 3  # synthetic points per class
    features: int = 128  # random ReLU features per "network"
    iterations: int = 400  # gradient steps on the synthetic points
    lr: float = 0.03  # SGD on the points, momentum as DM's
    momentum: float = 0.5
    dc_lr: float = 0.1  # distill_toy_dc's SGD rate (its cosine distance is on another scale than DM's loss)
    seed: int = 0  # data, initial points and every network are drawn from it

    def __post_init__(self):
        for name in ("num_classes", "n_per_class", "ipc", "features"):
            check_int(name, getattr(self, name), low=1)
        check_int("iterations", self.iterations, low=0)
        check_float("rare_fraction", self.rare_fraction, low=0.0, high=1.0)
        for name in ("radius", "rare_offset", "spread", "lr", "dc_lr"):
            check_float(name, getattr(self, name), low=0.0, low_open=name in ("spread", "lr", "dc_lr"))
        check_float("momentum", self.momentum, low=0.0, high=1.0)


@dataclass
class ToyData:
    X: torch.Tensor  # (N, 2) real points
    y: torch.Tensor  # (N,) class of each point
    rare: torch.Tensor  # (N,) bool: drawn from its class's rare mode
    common_modes: torch.Tensor  # (C, 2) centre of each class's common mode
    rare_modes: torch.Tensor  # (C, 2) centre of each class's rare mode


@dataclass
class ToyRun:
    path: torch.Tensor  # (iterations + 1, C * ipc, 2): the synthetic points at each step
    labels: torch.Tensor  # (C * ipc,) class of each synthetic point
    losses: list[float]  # the objective at each step


def make_toy(cfg: ToyConfig) -> ToyData:
    """The real points: per class n_per_class draws, round(rare_fraction * n) of them from the rare mode."""
    gen = torch.Generator().manual_seed(cfg.seed)
    angle = 2 * math.pi * torch.arange(cfg.num_classes, dtype=torch.float64) / cfg.num_classes
    direction = torch.stack([angle.cos(), angle.sin()], 1).float()  # (C, 2) unit vectors
    common = cfg.radius * direction
    rare = common + cfg.rare_offset * direction @ torch.tensor([[0.0, 1.0], [-1.0, 0.0]])  # turned 90 degrees
    n_rare = round(cfg.rare_fraction * cfg.n_per_class)
    is_rare = torch.arange(cfg.n_per_class) < n_rare  # (n,) the first n_rare
    centres = torch.where(is_rare[None, :, None], rare[:, None], common[:, None])  # (C, n, 2)
    X = centres + cfg.spread * torch.randn(centres.shape, generator=gen)
    y = torch.arange(cfg.num_classes).repeat_interleave(cfg.n_per_class)
    return ToyData(X.reshape(-1, 2), y, is_rare.repeat(cfg.num_classes), common, rare)


def random_features(num_features: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh "network": W (F, 2) and b (F,), all N(0, 1); phi(x) = relu(x W^T + b)."""
    return torch.randn(num_features, 2, generator=generator), torch.randn(num_features, generator=generator)


def toy_loss(
    data: ToyData,
    syn: torch.Tensor,
    labels_syn: torch.Tensor,
    net: tuple[torch.Tensor, torch.Tensor],
    robust: RobustConfig | None,
    subpops: Subpopulations | None,
    it: int,
) -> torch.Tensor:
    """DM's objective (robust=None) or robust.dm_objective, on the features of this "network"."""
    W, b = net
    num_classes = int(data.y.max()) + 1
    feat_real = torch.relu(data.X @ W.T + b)  # (N, F), no gradient needed
    feat_syn = torch.relu(syn @ W.T + b)  # (C ipc, F)
    plain = mean_matching_loss(feat_real, data.y, feat_syn, labels_syn, num_classes)
    if robust is None:
        return plain
    if robust.dm_objective == "double_layer":  # as dm.dm_double_layer_loss, on phi instead of net.embed
        return plain + robust.robust_weight * double_layer_loss(
            feat_real, data.y, feat_syn, labels_syn, robust.alpha, robust.max_weight
        )
    # 'pixels' here means the plane itself; W stands for the network (K-means in phi refits per W)
    feats = data.X if robust.cluster_space == "pixels" else feat_real
    ids = subpops.from_features(it, W, feats, data.y, feat_syn.detach(), labels_syn)
    return cluster_means_loss(feat_real, data.y, ids, feat_syn, labels_syn, num_classes, robust.alpha)


def init_points(data: ToyData, ipc: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ipc random real points of each class (DM's init='real'), sorted by class."""
    picks = [torch.nonzero(data.y == c).flatten() for c in range(int(data.y.max()) + 1)]
    picks = torch.cat([idx[torch.randperm(len(idx), generator=generator)[:ipc]] for idx in picks])
    return data.X[picks].clone(), data.y[picks].clone()


def distill_toy(data: ToyData, cfg: ToyConfig, robust: RobustConfig | None = None) -> ToyRun:
    """Move cfg.ipc points per class by SGD on DM's objective, a fresh random-feature map per step.

    Parameters
    ----------
    data : ToyData
        The real points, from make_toy.
    cfg : ToyConfig
        Steps, learning rate, features and seed (the same seed gives the same start for every objective).
    robust : RobustConfig, optional
        None: plain DM; else robust.dm_objective with its alpha, max_weight, robust_weight, clustering.
    """

    def step_loss(syn, labels_syn, subpops, it, gen):
        return toy_loss(data, syn, labels_syn, random_features(cfg.features, gen), robust, subpops, it)

    return _descend(data, cfg, cfg.lr, robust, step_loss)


def _descend(data: ToyData, cfg: ToyConfig, lr: float, robust: RobustConfig | None, step_loss) -> ToyRun:
    """SGD with momentum on cfg.ipc points per class (real init), cfg.iterations steps of
    step_loss(syn, labels_syn, subpops, it, generator); the same start for every objective."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # salted: not the data's draws
    syn, labels_syn = init_points(data, cfg.ipc, gen)
    syn.requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=lr, momentum=cfg.momentum)
    subpops = Subpopulations(robust, cfg.seed) if robust is not None else None
    path, losses = [syn.detach().clone()], []
    for it in range(cfg.iterations):
        loss = step_loss(syn, labels_syn, subpops, it, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        path.append(syn.detach().clone())
        losses.append(loss.item())
    return ToyRun(torch.stack(path), labels_syn, losses)


def toy_dc_loss(
    data: ToyData,
    syn: torch.Tensor,
    labels_syn: torch.Tensor,
    net: tuple[torch.Tensor, torch.Tensor],
    theta: torch.Tensor,
    robust: RobustConfig | None,
    subpops: Subpopulations | None,
    it: int,
) -> torch.Tensor:
    """DC's matching distance on the "network" (phi, theta): sum over classes c of
    D(grad_theta CE(syn_c), target_c), D = sum over theta's rows of (1 - cos), with target_c the
    gradient of the mean CE of class c's real points (robust=None) or of their normalised
    group-robust risk over subpopulations (robust: its alpha, max_weight and clustering)."""
    W, b = net
    feat_real = torch.relu(data.X @ W.T + b)  # (N, F)
    feat_syn = torch.relu(syn @ W.T + b)  # (C ipc, F)
    ids = None
    if robust is not None:  # 'pixels': the plane itself; W stands for the network
        ids = subpops.from_features(it, W, data.X, data.y, feat_syn.detach(), labels_syn)
    theta = theta.detach().requires_grad_(True)
    total = syn.new_zeros(())
    for c in labels_syn.unique().tolist():
        real, mine = data.y == c, labels_syn == c
        losses = F.cross_entropy(feat_real[real] @ theta.T, data.y[real], reduction="none")
        risk = (
            losses.mean()
            if robust is None
            else normalized_robust_risk(losses, ids[real], robust.alpha, robust.max_weight)
        )
        (target,) = torch.autograd.grad(risk, theta)
        loss_syn = F.cross_entropy(feat_syn[mine] @ theta.T, labels_syn[mine])
        (grad_syn,) = torch.autograd.grad(loss_syn, theta, create_graph=True)
        total = total + gradient_distance([grad_syn], [target])
    return total


def distill_toy_dc(data: ToyData, cfg: ToyConfig, robust: RobustConfig | None = None) -> ToyRun:
    """Move cfg.ipc points per class by SGD (cfg.dc_lr) on DC's distance (toy_dc_loss), a fresh
    random-feature map and linear layer (N(0, 0.1^2), DC's network at initialisation) per step.
    Same start as distill_toy for the same seed."""
    num_classes = int(data.y.max()) + 1

    def step_loss(syn, labels_syn, subpops, it, gen):
        net = random_features(cfg.features, gen)
        theta = 0.1 * torch.randn(num_classes, cfg.features, generator=gen)
        return toy_dc_loss(data, syn, labels_syn, net, theta, robust, subpops, it)

    return _descend(data, cfg, cfg.dc_lr, robust, step_loss)


def run_toy(
    cfg: ToyConfig | None = None, objectives: dict[str, RobustConfig | None] | None = None, method: str = "dm"
) -> tuple[ToyData, dict[str, ToyRun]]:
    """The toy's data and one run per objective, all from the same start: method 'dm' (distill_toy,
    OBJECTIVES by default) or 'dc' (distill_toy_dc, DC_OBJECTIVES by default)."""
    check_choice("method", method, ["dm", "dc"])
    cfg = cfg or ToyConfig()
    data = make_toy(cfg)
    run, default = (distill_toy, OBJECTIVES) if method == "dm" else (distill_toy_dc, DC_OBJECTIVES)
    return data, {name: run(data, cfg, robust) for name, robust in (objectives or default).items()}


def distance_to_rare(run: ToyRun, data: ToyData, step: int = -1) -> torch.Tensor:
    """(C, ipc): distance of each synthetic point, at `step`, to its class's rare-mode centre."""
    points = run.path[step]
    dist = (points - data.rare_modes[run.labels]).norm(dim=1)
    return dist.view(len(data.rare_modes), -1)
