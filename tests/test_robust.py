import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ddcore.models import ModelConfig, build_model
from ddcore.robust import (
    RobustConfig,
    Subpopulations,
    cluster_cvars,
    cvar,
    normalized_robust_risk,
    robust_risk,
    tail_size,
    train_network_robust,
)
from ddcore.train import TrainConfig

FAST = settings(max_examples=60, deadline=None)
values = st.floats(min_value=-100, max_value=100, allow_nan=False, allow_infinity=False, width=32)
loss_lists = st.lists(values, min_size=1, max_size=30)
alphas = st.floats(min_value=0.0, max_value=1.0, exclude_min=True)


def as_losses(xs, grad=False):
    return torch.tensor(xs, dtype=torch.float64, requires_grad=grad)


# --- cvar ---
@FAST
@given(loss_lists)
def test_cvar_at_alpha_one_is_the_mean(xs):
    losses = as_losses(xs)
    torch.testing.assert_close(cvar(losses, 1.0), losses.mean())


@FAST
@given(loss_lists, st.floats(min_value=1e-12, max_value=1.0))
def test_cvar_at_small_alpha_is_the_max(xs, scale):
    losses = as_losses(xs)
    alpha = scale / len(xs)  # alpha * n <= 1: only the worst loss counts
    assert cvar(losses, alpha) == losses.max()


@FAST
@given(loss_lists, alphas, alphas)
def test_cvar_is_non_increasing_in_alpha(xs, a, b):
    losses = as_losses(xs)
    lo, hi = min(a, b), max(a, b)
    assert cvar(losses, lo) >= cvar(losses, hi) - 1e-9
    assert losses.mean() - 1e-9 <= cvar(losses, hi) <= losses.max() + 1e-9


@FAST
@given(st.lists(values, min_size=1, max_size=30, unique=True), alphas)
def test_cvar_gradient_is_one_over_k_on_the_tail_only(xs, alpha):
    losses = as_losses(xs, grad=True)
    cvar(losses, alpha).backward()
    k = tail_size(len(xs), alpha)
    tail = set(torch.topk(losses.detach(), k).indices.tolist())
    expected = torch.tensor([1.0 / k if i in tail else 0.0 for i in range(len(xs))], dtype=torch.float64)
    torch.testing.assert_close(losses.grad, expected)


def test_tail_size_rounds_up_and_tolerates_float_error():
    assert tail_size(10, 0.7) == 7  # 0.7 * 10 = 7.000000000000001 in floating point
    assert tail_size(10, 0.71) == 8
    assert tail_size(10, 1e-9) == 1
    assert tail_size(3, 1.0) == 3
    assert cvar(torch.tensor([1.0, 2.0, 3.0, 4.0]), 0.5) == 3.5


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_cvar_rejects_alpha_outside_0_1(alpha):
    with pytest.raises(ValueError, match="alpha"):
        cvar(torch.ones(3), alpha)


def test_cvar_rejects_bad_losses():
    with pytest.raises(ValueError, match="losses"):
        cvar(torch.ones(2, 2), 0.5)
    with pytest.raises(ValueError, match="losses"):
        cvar(torch.ones(0), 0.5)


# --- cluster CVaRs and the robust risk ---
def reference_cluster_cvars(losses, ids, alpha):
    """Loop form: cvar of each cluster that occurs."""
    return {int(c): cvar(losses[ids == c], alpha) for c in ids.unique()}


clustered = st.integers(1, 25).flatmap(
    lambda n: st.tuples(st.lists(values, min_size=n, max_size=n), st.lists(st.integers(0, 6), min_size=n, max_size=n))
)


@FAST
@given(clustered, alphas)
def test_cluster_cvars_match_a_loop_over_clusters(data, alpha):
    xs, ids = data
    losses, ids = as_losses(xs), torch.tensor(ids)
    cvars, present = cluster_cvars(losses, ids, alpha)
    ref = reference_cluster_cvars(losses, ids, alpha)
    assert set(torch.nonzero(present).flatten().tolist()) == set(ref)
    for c, v in ref.items():
        torch.testing.assert_close(cvars[c], v)


@FAST
@given(clustered, alphas, st.floats(0.0, 3.0))
def test_robust_risk_is_mean_plus_weighted_max_of_cluster_cvars(data, alpha, max_weight):
    xs, ids = data
    losses, ids = as_losses(xs), torch.tensor(ids)
    ref = torch.stack(list(reference_cluster_cvars(losses, ids, alpha).values()))
    torch.testing.assert_close(robust_risk(losses, ids, alpha, max_weight), ref.mean() + max_weight * ref.max())


def test_robust_risk_special_cases():
    losses = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    one = torch.zeros(6, dtype=torch.long)
    close = torch.testing.assert_close
    close(robust_risk(losses, one, 0.5, max_weight=0.0), cvar(losses, 0.5))
    close(robust_risk(losses, one, 0.5, max_weight=1.0), 2 * cvar(losses, 0.5))
    two = torch.tensor([0, 0, 0, 5, 5, 5])  # ids need not be contiguous; 1..4 are absent
    close(robust_risk(losses, two, 1.0, max_weight=0.0), torch.tensor((2.0 + 20.0) / 2))
    close(robust_risk(losses, two, 1.0, max_weight=1.0), torch.tensor((2.0 + 20.0) / 2 + 20.0))
    with pytest.raises(ValueError, match="cluster_ids"):
        robust_risk(losses, two[:3], 0.5)
    with pytest.raises(ValueError, match=">= 0"):
        robust_risk(losses, two - 1, 0.5)
    with pytest.raises(ValueError, match="max_weight"):
        robust_risk(losses, two, 0.5, max_weight=-1.0)


def test_robust_risk_gradient_flows_to_the_worst_samples_only():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0], requires_grad=True)
    ids = torch.tensor([0, 0, 0, 0, 1, 1])
    robust_risk(losses, ids, alpha=0.5, max_weight=1.0).backward()
    # cluster 0: tail {3, 4} (mean weight 1/2 * 1/2); cluster 1: tail {20}, in the mean and the max
    torch.testing.assert_close(losses.grad, torch.tensor([0, 0, 0.25, 0.25, 0, 1.5]))


# --- why a differentiable CVaR: a tiny logistic regression with an under-served cluster ---
def two_d_problem():
    """Class 0 around (-2, 0); class 1 around (2, 0) and, rarely (10 of 210), around (-2, 3)."""
    g = torch.Generator().manual_seed(0)
    centres = [(-2.0, 0.0, 100), (2.0, 0.0, 100), (-2.0, 3.0, 10)]
    X = torch.cat([torch.tensor([x, y]) + 0.5 * torch.randn(n, 2, generator=g) for x, y, n in centres])
    y = torch.tensor([0] * 100 + [1] * 110)
    clusters = torch.tensor([0] * 100 + [1] * 100 + [2] * 10)
    return X, y, clusters


def descend(risk, steps=10, lr=0.5):
    """Gradient descent on a 2-class linear model that starts out splitting on x alone."""
    X, y, clusters = two_d_problem()
    W = torch.tensor([[-0.5, 0.0], [0.5, 0.0]], requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    first = None
    for _ in range(steps):
        gW, gb = torch.autograd.grad(risk(F.cross_entropy(X @ W.T + b, y, reduction="none"), clusters), [W, b])
        first = torch.cat([gW.flatten(), gb]) if first is None else first
        with torch.no_grad():
            W -= lr * gW
            b -= lr * gb
    correct = ((X @ W.T + b).argmax(1) == y).double()
    return first, [float(correct[clusters == c].mean()) for c in range(3)]


def mean_risk(losses, clusters):
    return losses.mean()


def ours(losses, clusters):
    return robust_risk(losses, clusters, alpha=0.8, max_weight=1.0)


def released_code_risk(losses, clusters, alpha=0.8):
    """The released code's construction: CVaRs from detached NumPy values, added as a constant.

    mean + (constant - mean) + mean: the value carries the CVaR, the gradient is the mean's.
    """
    values, ids = losses.detach().cpu().numpy(), clusters.numpy()
    per_cluster = []
    for c in np.unique(ids):
        tail = np.sort(values[ids == c])[::-1][: tail_size(int((ids == c).sum()), alpha)]
        per_cluster.append(tail.mean())
    constant = torch.tensor(np.mean(per_cluster) + np.max(per_cluster), dtype=losses.dtype)
    mean = losses.mean()
    return mean + (constant - mean) + mean


def test_robust_gradient_differs_from_the_mean_and_serves_the_small_cluster():
    g_mean, acc_mean = descend(mean_risk)
    g_ours, acc_ours = descend(ours)
    assert F.cosine_similarity(g_mean, g_ours, dim=0) < 0.99
    assert acc_ours[2] >= acc_mean[2] + 0.3  # the rare cluster: 1.0 vs 0.5 after 10 steps
    assert min(acc_ours) > min(acc_mean)
    assert min(acc_ours[:2]) >= 0.95  # without giving up the large clusters


def test_released_code_construction_has_the_mean_loss_gradient():
    X, y, clusters = two_d_problem()
    W = torch.tensor([[-0.5, 0.0], [0.5, 0.0]], requires_grad=True)
    losses = F.cross_entropy(X @ W.T, y, reduction="none")
    g_released = torch.autograd.grad(released_code_risk(losses, clusters), W, retain_graph=True)[0]
    g_mean = torch.autograd.grad(losses.mean(), W, retain_graph=True)[0]
    g_ours = torch.autograd.grad(ours(losses, clusters), W)[0]
    torch.testing.assert_close(g_released, g_mean)
    # its value is our risk plus the mean loss, but that value never reaches the parameters
    torch.testing.assert_close(released_code_risk(losses, clusters), ours(losses, clusters) + losses.mean())
    assert not torch.allclose(g_ours, g_mean)


# --- config ---
def test_robust_config_defaults_and_validation():
    cfg = RobustConfig()
    assert (cfg.clustering, cfg.k, cfg.space, cfg.alpha, cfg.max_weight, cfg.recluster_every) == (
        "synthetic",
        10,
        "embedding",
        0.8,
        1.0,
        10,
    )
    with pytest.raises(ValueError, match=r"clustering='voronoi'.*\['synthetic', 'kmeans'\]"):
        RobustConfig(clustering="voronoi")
    with pytest.raises(ValueError, match=r"space='latent'.*\['pixels', 'embedding'\]"):
        RobustConfig(space="latent")
    with pytest.raises(ValueError, match="alpha"):
        RobustConfig(alpha=0.0)
    with pytest.raises(ValueError, match="k=0"):
        RobustConfig(k=0)
    with pytest.raises(ValueError, match="max_weight"):
        RobustConfig(max_weight=-0.5)
    with pytest.raises(ValueError, match="recluster_every"):
        RobustConfig(recluster_every=0)
    with pytest.raises(TypeError):
        RobustConfig(alpah=0.5)  # unknown keys raise


# --- subpopulations and robust training on a tiny network ---
def tiny_net(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(width=8), 1, 3, (28, 28))


def test_subpopulations_synthetic_are_voronoi_cells_in_the_embedding():
    gen = torch.Generator().manual_seed(0)
    net = tiny_net()
    images_real, labels_real = torch.randn(12, 1, 28, 28, generator=gen), torch.arange(12) % 3
    images_syn, labels_syn = torch.randn(6, 1, 28, 28, generator=gen), torch.tensor([0, 0, 1, 1, 2, 2])
    ids = Subpopulations(RobustConfig())(0, net, images_real, labels_real, images_syn, labels_syn)
    assert ids.shape == (12,) and torch.equal(labels_syn[ids], labels_real)
    with torch.no_grad():
        d = torch.cdist(net.embed(images_real), net.embed(images_syn))
    d[labels_real[:, None] != labels_syn[None, :]] = math.inf
    assert torch.equal(ids, d.argmin(1))
    with pytest.raises(ValueError, match="images_syn"):
        Subpopulations(RobustConfig())(0, net, images_real, labels_real)


def test_subpopulations_kmeans_refit_schedule():
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(20, 1, 28, 28, generator=gen), torch.arange(20) % 2
    sub = Subpopulations(RobustConfig(clustering="kmeans", k=3, space="pixels", recluster_every=2))
    ids = sub(0, None, images, labels)
    assert torch.equal(ids // 3, labels)  # ids are class * k + cluster
    fitted = {c: fit[0].centroids.clone() for c, fit in sub._fits.items()}
    sub(1, None, images[:6], labels[:6])  # assigned to the step-0 centroids
    assert all(torch.equal(sub._fits[c][0].centroids, fitted[c]) for c in fitted)
    sub(2, None, images, labels)  # refit
    assert all(sub._fits[c][1] == 2 for c in fitted)
    # one class at a time (as DC's per-class loop calls it) works too
    only_one = sub(3, None, images[labels == 1], labels[labels == 1])
    assert (only_one // 3 == 1).all()


def test_subpopulations_kmeans_in_embedding_refits_for_a_new_network():
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(12, 1, 28, 28, generator=gen), torch.arange(12) % 2
    sub = Subpopulations(RobustConfig(clustering="kmeans", k=2, space="embedding", recluster_every=100))
    net_a, net_b = tiny_net(0), tiny_net(1)
    sub(0, net_a, images, labels)
    assert sub._fits[0][1] == 0
    sub(1, net_a, images, labels)
    assert sub._fits[0][1] == 0  # same net: centroids kept
    sub(2, net_b, images, labels)
    assert sub._fits[0][1] == 2  # another net's embedding: refit


def test_train_network_robust_lowers_the_robust_risk():
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(24, 1, 28, 28, generator=gen), torch.arange(24) % 3
    ids = torch.arange(24) % 6
    net = tiny_net()
    cfg = TrainConfig(epochs=6, lr=0.01, batch_size=12, momentum=0.9, weight_decay=0.0, decay_at_half=False)
    history = train_network_robust(net, images, labels, ids, cfg, RobustConfig(), None, gen)
    assert len(history) == 6 and all(math.isfinite(h) for h in history)
    assert history[-1] < history[0]


def test_robust_config_objective_fields():
    cfg = RobustConfig()
    assert (cfg.dc_risk, cfg.dm_objective, cfg.robust_weight) == ("target", "double_layer", 0.1)
    assert cfg.cluster_space == "embedding"
    assert RobustConfig(clustering="kmeans", space="pixels").cluster_space == "pixels"
    with pytest.raises(ValueError, match=r"dc_risk='loss'.*\['target', 'network', 'both'\]"):
        RobustConfig(dc_risk="loss")
    with pytest.raises(ValueError, match=r"dm_objective='mmd'.*\['cluster_means', 'double_layer'\]"):
        RobustConfig(dm_objective="mmd")
    with pytest.raises(ValueError, match="robust_weight"):
        RobustConfig(robust_weight=-1.0)
    with pytest.raises(ValueError, match=r"needs clustering='synthetic', got clustering='kmeans'"):
        RobustConfig(dm_objective="double_layer", clustering="kmeans").check_for_dm()
    from ddcore.distill import method_config

    with pytest.raises(ValueError, match="or set dm_objective='cluster_means'"):
        method_config("dm", robust=RobustConfig(clustering="kmeans"))
    method_config("dc", robust=RobustConfig(clustering="kmeans"))  # no error: DC ignores dm_objective


def test_normalized_robust_risk_is_the_mean_with_one_cluster_and_alpha_one():
    losses = torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64)
    one = torch.zeros(4, dtype=torch.long)
    for max_weight in (0.0, 1.0, 2.5):
        torch.testing.assert_close(normalized_robust_risk(losses, one, 1.0, max_weight), losses.mean())
    two = torch.tensor([0, 0, 0, 1])  # mean of (2, 10) plus the max 10, over 2
    torch.testing.assert_close(normalized_robust_risk(losses, two, 1.0, 1.0), torch.tensor(8.0, dtype=torch.float64))


def test_subpopulations_from_features_matches_the_call():
    gen = torch.Generator().manual_seed(0)
    net = tiny_net()
    images_real, labels_real = torch.randn(12, 1, 28, 28, generator=gen), torch.arange(12) % 3
    images_syn, labels_syn = torch.randn(6, 1, 28, 28, generator=gen), torch.tensor([0, 0, 1, 1, 2, 2])
    sub = Subpopulations(RobustConfig())
    with torch.no_grad():
        feats, feats_syn = net.embed(images_real), net.embed(images_syn)
    assert torch.equal(
        sub.from_features(0, net, feats, labels_real, feats_syn, labels_syn),
        sub(0, net, images_real, labels_real, images_syn, labels_syn),
    )
    with pytest.raises(ValueError, match="features_syn"):
        sub.from_features(0, net, feats, labels_real)
