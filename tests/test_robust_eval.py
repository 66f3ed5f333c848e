import math

import pytest
import torch

from ddcore import evaluate
from ddcore.cluster import kmeans
from ddcore.distill import distill
from ddcore.evaluate import BLUR_SIGMA, CORRUPTIONS, EvalConfig, cluster_min_accuracy, corrupt, evaluate_robustness
from ddcore.models import ModelConfig
from ddcore.subpop import make_rare_subgroups
from ddcore.train import TrainConfig

FAST = EvalConfig(model=ModelConfig(width=8), train=TrainConfig(epochs=2), num_nets=2)


# --- cluster-min accuracy ---
def test_cluster_min_accuracy_extremes_and_cache(small):
    labels = small.labels_test
    perfect = cluster_min_accuracy(labels, small)
    assert perfect["min"] == perfect["mean"] == 1.0 and len(perfect["per_cluster"]) == 10
    cached = len(evaluate._TEST_CLUSTERS)
    wrong = cluster_min_accuracy((labels + 1) % 10, small)
    assert wrong["min"] == wrong["mean"] == 0.0
    assert len(evaluate._TEST_CLUSTERS) == cached  # the clustering was reused


def test_cluster_min_accuracy_finds_the_failing_cluster(small):
    ids = evaluate._test_clusters(small, 10, 0)
    pred = small.labels_test.clone()
    bad = ids == ids[0]
    pred[bad] = (pred[bad] + 1) % 10  # every image of one cluster misclassified
    result = cluster_min_accuracy(pred, small)
    assert result["min"] == 0.0 and result["per_cluster"].count(0.0) == 1
    assert math.isclose(result["mean"], 0.9)
    # clusters ignore labels: K-means on the normalised pixels of the whole test set
    assert torch.equal(ids, kmeans(small.images_test, 10, seed=0).ids)


def test_cluster_min_accuracy_checks_its_input(small):
    with pytest.raises(ValueError, match="pred"):
        cluster_min_accuracy(small.labels_test[:5], small)
    with pytest.raises(ValueError, match="k="):
        cluster_min_accuracy(small.labels_test, small, k=0)


def test_cluster_cache_tells_datasets_with_the_same_name_apart(small):
    rare_set, _, _ = make_rare_subgroups(small, seed=0)
    ids_small = evaluate._test_clusters(small, 10, 0)
    ids_rare = evaluate._test_clusters(rare_set, 10, 0)
    assert len(ids_rare) == 2 * len(ids_small)


# --- corruptions ---
def test_gaussian_noise_has_variance_0005_and_is_seeded():
    gray = torch.full((8, 1, 32, 32), 0.5)
    noisy = corrupt(gray, "gaussian_noise", seed=0)
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert abs((noisy - gray).var().item() - 0.005) < 0.0005
    assert torch.equal(noisy, corrupt(gray, "gaussian_noise", seed=0))
    assert not torch.equal(noisy, corrupt(gray, "gaussian_noise", seed=1))
    clipped = corrupt(torch.ones(2, 1, 8, 8), "gaussian_noise", seed=0)
    assert clipped.max() <= 1 and clipped.min() >= 0


def test_blur_is_a_gaussian_of_sigma_2():
    delta = torch.zeros(1, 1, 33, 33)
    delta[..., 16, 16] = 1.0
    out = corrupt(delta, "blur")
    assert out.shape == delta.shape and math.isclose(float(out.sum()), 1.0, rel_tol=1e-5)
    offsets = torch.arange(33.0) - 16
    var_x = float((out[0, 0].sum(0) * offsets**2).sum())
    assert 0.9 * BLUR_SIGMA**2 < var_x <= BLUR_SIGMA**2  # truncated at 3 sigma: slightly under 4
    flat = torch.full((2, 3, 16, 16), 0.3)
    torch.testing.assert_close(corrupt(flat, "blur"), flat)


def test_invert_and_unknown_kind():
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(corrupt(x, "invert"), 1 - x)
    with pytest.raises(ValueError, match=r"kind='fog'"):
        corrupt(x, "fog")


# --- the whole robustness evaluation ---
def test_evaluate_robustness_columns_and_groups(small):
    rare_set, _, test_groups = make_rare_subgroups(small, seed=0)
    syn = distill("random", rare_set, ipc=2, progress=False)
    df = evaluate_robustness(syn, rare_set, FAST, seed=0, device="cpu", test_groups=test_groups)
    expected = {
        "accuracy",
        "cluster_min_accuracy",
        "cluster_mean_accuracy",
        "group_0",
        "group_1",
        "worst_group_accuracy",
        *(f"accuracy_{k}" for k in CORRUPTIONS),
    }
    assert expected <= set(df.columns) and len(df) == 2
    assert (df.cluster_min_accuracy <= df.cluster_mean_accuracy).all()
    assert (df.worst_group_accuracy == df[["group_0", "group_1"]].min(axis=1)).all()
    for col in expected:
        assert df[col].between(0, 1).all()


def test_evaluate_robustness_checks_its_input(small):
    syn = distill("random", small, ipc=1, progress=False)
    with pytest.raises(ValueError, match="test_groups has 3 ids"):
        evaluate_robustness(syn, small, FAST, test_groups=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="corruption='snow'"):
        evaluate_robustness(syn, small, FAST, corruptions=("snow",))
    with pytest.raises(TypeError, match="SyntheticSet"):
        evaluate_robustness(syn.images, small, FAST)
