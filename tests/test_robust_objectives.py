"""The robust objectives inside the methods: DC's robust target, DM's cluster-means and double-layer risks."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ddcore.cluster import voronoi_cells
from ddcore.distill import distill
from ddcore.distill.dc import class_gradients, robust_class_gradients
from ddcore.distill.dm import cluster_means_loss, double_layer_loss, mean_matching_loss
from ddcore.models import ModelConfig, build_model
from ddcore.robust import RobustConfig, cvar

TINY = ModelConfig(width=8)
DC = {"iterations": 1, "outer_loop": 2, "inner_loop": 1, "batch_real": 8, "model": TINY, "progress": False}
DM = {"iterations": 3, "batch_real": 8, "model": TINY, "progress": False}


def flat(grads):
    return torch.cat([g.flatten() for g in grads])


def tiny_net(seed):
    torch.manual_seed(seed)
    return build_model(TINY, 1, 10, (28, 28))


# --- DC: the risk in the matching target ---
def one_class_with_a_rare_cluster(mnist5k, c=3, n=48, n_rare=6):
    """n real images of class c, the first n_rare inverted (dark digit on light ground): a rare cluster."""
    x = mnist5k.images_train[mnist5k.indices_per_class("train")[c][:n]].clone()
    rare = torch.arange(n) < n_rare
    x[rare] = x.min() + x.max() - x[rare]
    return x, torch.full((n,), c), rare.long()


def test_robust_target_with_one_cluster_and_alpha_one_is_dc_s(mnist5k):
    x, y, _ = one_class_with_a_rare_cluster(mnist5k)
    net = tiny_net(0)

    def one(feats):
        return torch.zeros(len(feats), dtype=torch.long)

    for max_weight in (0.0, 1.0):
        robust = robust_class_gradients(net, x, y, one, RobustConfig(alpha=1.0, max_weight=max_weight))
        for g_robust, g_plain in zip(robust, class_gradients(net, x, y, False)):
            torch.testing.assert_close(g_robust, g_plain)


def test_robust_target_turns_towards_a_rare_cluster(mnist5k):
    """Mean over clusters (max_weight 0): the 6 inverted images weigh as much as the 42 others, so
    the target turns away from the mean loss's on every net. With the max term (the default) it
    turns further when the rare cluster is the worst, and towards the common images otherwise."""
    x, y, ids = one_class_with_a_rare_cluster(mnist5k)
    rare_worst = []
    for seed in range(4):
        net = tiny_net(seed)
        plain = flat(class_gradients(net, x, y, False))
        cos = {}
        for max_weight in (0.0, 1.0):
            robust = flat(
                robust_class_gradients(net, x, y, lambda f: ids, RobustConfig(alpha=0.8, max_weight=max_weight))
            )
            cos[max_weight] = F.cosine_similarity(robust, plain, dim=0).item()
        with torch.no_grad():
            losses = F.cross_entropy(net(x), y, reduction="none")
        rare_worst.append(bool(cvar(losses[ids == 1], 0.8) > cvar(losses[ids == 0], 0.8)))
        print(
            f"net {seed}: cosine to the mean target {cos[0.0]:.3f} (max_weight 0), {cos[1.0]:.3f} (max_weight 1); "
            f"rare cluster worst: {rare_worst[-1]}"
        )
        assert cos[0.0] < 0.95
        assert (cos[1.0] < 0.95) == rare_worst[-1]
    assert any(rare_worst)


@pytest.mark.parametrize(
    "robust",
    [RobustConfig(clustering="kmeans", k=1, space="pixels", alpha=1.0), RobustConfig(alpha=1.0)],
    ids=["kmeans k=1", "one Voronoi cell"],
)
def test_dc_with_a_one_cluster_robust_target_is_plain_dc(small, robust):
    plain = distill("dc", small, ipc=1, seed=3, **DC)
    same = distill("dc", small, ipc=1, seed=3, robust=robust, **DC)  # ipc 1: one cell per class
    assert same.meta["method"] == "dc+robust"
    torch.testing.assert_close(same.images, plain.images, rtol=0, atol=1e-5)


def test_dc_risk_choices_give_different_sets(small):
    base = RobustConfig(clustering="kmeans", k=2, space="pixels", alpha=0.5)
    sets = {
        risk: distill("dc", small, ipc=2, seed=0, robust=dataclasses.replace(base, dc_risk=risk), **DC).images
        for risk in ("target", "network", "both")
    }
    plain = distill("dc", small, ipc=2, seed=0, **DC).images
    for risk, images in sets.items():
        assert torch.isfinite(images).all() and not torch.allclose(images, plain, atol=1e-4), risk
    assert not torch.allclose(sets["target"], sets["network"], atol=1e-4)


@pytest.mark.parametrize("clustering", ["synthetic", "kmeans"])
def test_dc_robust_target_with_batched_classes_gives_the_loop_s_set(small, clustering):
    robust = RobustConfig(clustering=clustering, k=2, space="pixels", alpha=0.5)
    options = dict(DC, iterations=2)
    loop = distill("dc", small, ipc=2, seed=0, robust=robust, **options)
    batched = distill("dc", small, ipc=2, seed=0, robust=robust, batch_classes=True, **options)
    torch.testing.assert_close(batched.images, loop.images, rtol=0, atol=1e-5)


# --- DM: the two robust objectives, on embeddings ---
def two_classes(seed=0, n=30, dim=5):
    g = torch.Generator().manual_seed(seed)
    feat_real = torch.randn(2 * n, dim, generator=g, dtype=torch.float64)
    groups_real = torch.arange(2).repeat_interleave(n)
    picks = torch.tensor([0, 10, 20, n, n + 10, n + 20])  # near real points: no cell is empty
    feat_syn = (feat_real[picks] + 0.1 * torch.randn(6, dim, generator=g, dtype=torch.float64)).requires_grad_(True)
    groups_syn = torch.tensor([0, 0, 0, 1, 1, 1])
    return feat_real, groups_real, feat_syn, groups_syn


def double_layer_by_loops(feat_real, groups_real, feat_syn, groups_syn, alpha, max_weight):
    cells = voronoi_cells(feat_real, groups_real, feat_syn.detach(), groups_syn)
    total = 0.0
    for c in groups_real.unique().tolist():
        cvars = [
            cvar(((feat_real[cells == j] - feat_syn[j]) ** 2).sum(1), alpha)
            for j in torch.nonzero(groups_syn == c).flatten().tolist()
            if (cells == j).any()
        ]
        cvars = torch.stack(cvars)
        total = total + cvars.mean() + max_weight * cvars.max()
    return total


@pytest.mark.parametrize("alpha,max_weight", [(0.8, 1.0), (0.3, 0.0), (1.0, 2.0)])
def test_double_layer_loss_matches_loops_over_classes_and_cells(alpha, max_weight):
    feat_real, groups_real, feat_syn, groups_syn = two_classes()
    got = double_layer_loss(feat_real, groups_real, feat_syn, groups_syn, alpha, max_weight)
    want = double_layer_by_loops(feat_real, groups_real, feat_syn, groups_syn, alpha, max_weight)
    torch.testing.assert_close(got, want)
    g_got = torch.autograd.grad(got, feat_syn)[0]
    g_want = torch.autograd.grad(
        double_layer_by_loops(feat_real, groups_real, feat_syn, groups_syn, alpha, max_weight), feat_syn
    )[0]
    torch.testing.assert_close(g_got, g_want)


def test_double_layer_empty_cell_counts_nowhere():
    feat_real, groups_real, feat_syn, groups_syn = two_classes()
    with torch.no_grad():
        feat_syn[1] = 100.0  # far from every real point: its cell is empty
    loss = double_layer_loss(feat_real, groups_real, feat_syn, groups_syn, 0.8, 1.0)
    grad = torch.autograd.grad(loss, feat_syn)[0]
    assert torch.equal(grad[1], torch.zeros_like(grad[1]))
    assert (grad[[0, 2, 3, 4, 5]].norm(dim=1) > 0).all()
    # it is not in the class's mean either: the same loss as without that image
    keep = torch.tensor([0, 2, 3, 4, 5])
    without = double_layer_loss(feat_real, groups_real, feat_syn[keep], groups_syn[keep], 0.8, 1.0)
    torch.testing.assert_close(loss, without)


def test_cluster_means_is_dm_towards_the_average_of_the_tail_cluster_means():
    feat_real, groups_real, feat_syn, groups_syn = two_classes(n=40)
    ids = torch.cat([torch.tensor([0] * 36 + [1] * 4), torch.tensor([2] * 30 + [3] * 10)])  # unequal clusters
    one = groups_real.clone()  # one cluster per class: plain DM
    torch.testing.assert_close(
        cluster_means_loss(feat_real, groups_real, one, feat_syn, groups_syn, 2, 0.8),
        mean_matching_loss(feat_real, groups_real, feat_syn, groups_syn, 2),
    )
    # alpha = 1: every cluster is in the tail; the gradient is DM's towards the unweighted average of cluster means
    loss = cluster_means_loss(feat_real, groups_real, ids, feat_syn, groups_syn, 2, 1.0)
    mean_of_means = torch.stack(
        [(feat_real[ids == 2 * c].mean(0) + feat_real[ids == 2 * c + 1].mean(0)) / 2 for c in range(2)]
    )
    m = torch.stack([feat_syn[groups_syn == c].mean(0) for c in range(2)])
    torch.testing.assert_close(
        torch.autograd.grad(loss, feat_syn)[0], torch.autograd.grad(((m - mean_of_means) ** 2).sum(), feat_syn)[0]
    )


def test_dm_double_layer_runs_and_is_its_own_objective(small):
    plain = distill("dm", small, ipc=2, seed=5, **DM)
    zero = distill(
        "dm", small, ipc=2, seed=5, robust=RobustConfig(dm_objective="double_layer", robust_weight=0.0), **DM
    )
    torch.testing.assert_close(zero.images, plain.images, rtol=0, atol=1e-5)  # weight 0: plain DM
    double = distill("dm", small, ipc=2, seed=5, robust=RobustConfig(dm_objective="double_layer"), **DM)
    means = distill("dm", small, ipc=2, seed=5, robust=RobustConfig(dm_objective="cluster_means"), **DM)
    assert double.meta["method"] == "dm+robust" and torch.isfinite(double.images).all()
    assert double.meta["config"]["robust"]["dm_objective"] == "double_layer"
    for other in (plain, means):
        assert not torch.allclose(double.images, other.images, atol=1e-4)
