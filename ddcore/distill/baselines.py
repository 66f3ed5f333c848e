"""Coreset baselines: real images chosen per class (random, herding, K-means)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.cluster import KMeans

from ..augment import dsa_for
from ..checks import check_choice, check_int
from ..models import ModelConfig
from ..runtime import set_seed
from ..train import TrainConfig, train_network
from . import register_method
from .common import Run, class_indices, fresh_net, make_set


@dataclass
class RandomConfig:
    pass


@register_method("random", RandomConfig)
def random_subset(run: Run, cfg: RandomConfig):
    """ipc real images drawn uniformly per class: the baseline every method must beat."""
    gen = torch.Generator().manual_seed(run.seed)
    picks = [idx[torch.randperm(len(idx), generator=gen)[: run.ipc]] for idx in class_indices(run)]
    return _from_indices(run, "random", cfg, picks)


@dataclass
class HerdingConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    feature_epochs: int = 10  # epochs of training on the real data before embedding; 0 = a random net

    def __post_init__(self):
        check_int("feature_epochs", self.feature_epochs, low=0)


@register_method("herding", HerdingConfig)
def herding(run: Run, cfg: HerdingConfig):
    """Greedy herding (Welling 2009) on ConvNet embeddings: each pick brings the running mean of
    the chosen features closest to the class mean."""
    feats = _embeddings(run, cfg.model, cfg.feature_epochs)
    picks = [idx[herd(feats[idx], run.ipc)] for idx in class_indices(run)]
    return _from_indices(run, "herding", cfg, picks)


@dataclass
class KMeansConfig:
    space: str = "pixels"  # cluster normalised pixels, or 'embedding' of a (trained) ConvNet
    model: ModelConfig = field(default_factory=ModelConfig)
    feature_epochs: int = 10
    n_init: int = 3  # K-means restarts

    def __post_init__(self):
        check_choice("space", self.space, ("pixels", "embedding"))
        check_int("n_init", self.n_init, low=1)


@register_method("kmeans_coreset", KMeansConfig)
def kmeans_coreset(run: Run, cfg: KMeansConfig):
    """Per class, K-means with k = ipc; keep the real image nearest to each centroid."""
    if cfg.space == "pixels":
        feats = run.dataset.images_train.flatten(1)
    else:
        feats = _embeddings(run, cfg.model, cfg.feature_epochs)
    picks = []
    for idx in class_indices(run):
        x = feats[idx].double().numpy()
        km = KMeans(n_clusters=run.ipc, n_init=cfg.n_init, random_state=run.seed).fit(x)
        dist = ((x[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)  # (n, k)
        chosen: list[int] = []
        for c in np.argsort(dist.min(0)):  # clusters with the closest member pick first
            order = np.argsort(dist[:, c])
            chosen.append(int(next(i for i in order if i not in chosen)))
        picks.append(idx[torch.tensor(sorted(chosen))])
    return _from_indices(run, "kmeans_coreset", cfg, picks)


def herd(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k rows chosen greedily so that their running mean tracks the mean of all rows."""
    target, total = features.mean(0), torch.zeros_like(features[0])
    available = torch.ones(len(features), dtype=torch.bool)
    chosen = []
    for step in range(1, k + 1):
        dist = ((target - (total + features) / step) ** 2).sum(1)
        dist[~available] = float("inf")
        best = int(dist.argmin())
        chosen.append(best)
        available[best] = False
        total = total + features[best]
    return torch.tensor(chosen)


def _embeddings(run: Run, model: ModelConfig, epochs: int) -> torch.Tensor:
    """Penultimate features of every training image, from a ConvNet trained `epochs` on them."""
    gen = set_seed(run.seed)
    net = fresh_net(run, model, gen)
    images, labels = run.dataset.images_train.to(run.device), run.dataset.labels_train.to(run.device)
    if epochs:
        train_network(net, images, labels, TrainConfig(epochs=epochs), dsa_for(run.dataset.name), gen)
    net.eval()
    with torch.no_grad():
        return torch.cat([net.embed(x) for x in images.split(512)]).cpu()


def _from_indices(run: Run, method: str, cfg, picks: list[torch.Tensor]):
    idx = torch.cat(picks)
    return make_set(run, method, cfg, run.dataset.images_train[idx], run.dataset.labels_train[idx])
