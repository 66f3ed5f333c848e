"""Clusters of feature vectors: K-means (overall and per class), nearest-centroid assignment,
and the synthetic Voronoi cells that define subpopulations in robust dataset distillation.

Features are any (N, ...) tensor; everything after the first axis is flattened, so images can
be clustered in pixel space directly. K-means runs in scikit-learn on the CPU (seeded); the
assignment functions stay in torch and run on whatever device the features are on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .checks import check_finite, check_int

__all__ = ["Clusters", "kmeans", "kmeans_per_class", "assign", "voronoi_cells"]

_CHUNK = 4096  # rows of the distance matrix computed at once, to bound memory


@dataclass(eq=False, repr=False)
class Clusters:
    """A partition of N points into k clusters."""

    ids: torch.Tensor  # (N,) int64 in [0, k): cluster of each point
    centroids: torch.Tensor  # (k, D) on the features' device and dtype
    sizes: torch.Tensor  # (k,) int64: points in each cluster
    cluster_class: torch.Tensor | None = None  # (k,) int64 class of each cluster (per-class K-means)

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    def __repr__(self) -> str:
        per_class = "" if self.cluster_class is None else ", per class"
        return f"Clusters(k={self.k}, points={len(self.ids)}, dim={self.centroids.shape[1]}{per_class})"


def _flat(name: str, features: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, D) floating tensor, checked finite."""
    if not torch.is_tensor(features) or features.dim() < 2:
        shape = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
        raise ValueError(f"{name} must be a tensor of shape (N, D) or (N, C, H, W), got {shape}")
    features = features.detach().flatten(1)
    features = features if features.is_floating_point() else features.float()
    check_finite(name, features)
    return features


def _check_labels(name: str, labels: torch.Tensor, n: int) -> None:
    if not torch.is_tensor(labels) or labels.dim() != 1 or len(labels) != n or labels.is_floating_point():
        shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"{name} must be an integer tensor of shape ({n},), got {shape}")


def kmeans(features: torch.Tensor, k: int, seed: int, n_init: int = 3) -> Clusters:
    """K-means (scikit-learn, k-means++ starts, best of `n_init`, seeded) on (N, ...) features."""
    X = _flat("features", features)
    check_int("k", k, low=1, high=X.shape[0])
    check_int("seed", seed, low=0, high=2**32 - 1)
    check_int("n_init", n_init, low=1)
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # Raised when there are fewer distinct points than k; some clusters then stay empty.
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(X.cpu().float().numpy())
    ids = torch.as_tensor(km.labels_, dtype=torch.long).to(X.device)
    centroids = torch.as_tensor(km.cluster_centers_).to(device=X.device, dtype=X.dtype)
    return Clusters(ids, centroids, torch.bincount(ids, minlength=k))


def kmeans_per_class(features: torch.Tensor, labels: torch.Tensor, k: int, seed: int, n_init: int = 3) -> Clusters:
    """K-means with k clusters inside each class, as ONE Clusters with globally unique ids.

    Clusters of a class are contiguous, classes in increasing order (those absent from `labels`
    get none), and `cluster_class` gives each cluster's class. A class with fewer than k points
    gets one cluster per point. Global ids let `robust_risk` take the ids directly.
    """
    X = _flat("features", features)
    _check_labels("labels", labels, X.shape[0])
    check_int("k", k, low=1)
    labels = labels.to(X.device)
    ids = torch.empty(X.shape[0], dtype=torch.long, device=X.device)
    centroids, classes, offset = [], [], 0
    for c in labels.unique().tolist():
        mask = labels == c
        part = kmeans(X[mask], min(k, int(mask.sum())), seed, n_init)
        ids[mask] = part.ids + offset
        centroids.append(part.centroids)
        classes.append(torch.full((part.k,), c, dtype=torch.long, device=X.device))
        offset += part.k
    return Clusters(ids, torch.cat(centroids), torch.bincount(ids, minlength=offset), torch.cat(classes))


def assign(
    features: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor | None = None,
    cluster_class: torch.Tensor | None = None,
) -> torch.Tensor:
    """Index of the nearest centroid (Euclidean) of each point, (N,) int64.

    With `labels` and `cluster_class` (e.g. from `kmeans_per_class`), a point may only join a
    cluster of its own class. Ties go to the lowest index. Runs on the features' device.
    """
    X = _flat("features", features)
    C = _flat("centroids", centroids).to(device=X.device, dtype=X.dtype)
    if X.shape[1] != C.shape[1]:
        raise ValueError(f"features have dimension {X.shape[1]} but centroids {C.shape[1]}")
    if (labels is None) != (cluster_class is None):
        raise ValueError("give both labels and cluster_class (to assign within classes), or neither")
    if labels is None:
        return torch.cat([torch.cdist(x, C).argmin(1) for x in X.split(_CHUNK)])
    _check_labels("labels", labels, X.shape[0])
    _check_labels("cluster_class", cluster_class, C.shape[0])
    labels, cluster_class = labels.to(X.device), cluster_class.to(X.device)
    missing = ~torch.isin(labels, cluster_class)
    if missing.any():
        raise ValueError(f"class {int(labels[missing][0])} has points but no centroid to assign them to")
    out = []
    for x, y in zip(X.split(_CHUNK), labels.split(_CHUNK)):
        dist = torch.cdist(x, C).masked_fill(y[:, None] != cluster_class[None, :], float("inf"))
        out.append(dist.argmin(1))
    return torch.cat(out)


def voronoi_cells(
    features_real: torch.Tensor, labels_real: torch.Tensor, features_syn: torch.Tensor, labels_syn: torch.Tensor
) -> torch.Tensor:
    """For each real point, the index of its nearest synthetic point OF THE SAME CLASS, (N,) int64.

    These are the subpopulations of robust dataset distillation (Vahidian et al., Algorithm 1):
    the synthetic images are the cells' centres. Indices point into the synthetic set, so they
    are unique across classes and can be passed to `robust_risk` as cluster ids.
    """
    labels_syn = labels_syn.argmax(1) if labels_syn.is_floating_point() and labels_syn.dim() == 2 else labels_syn
    return assign(features_real, features_syn, labels_real, labels_syn)
