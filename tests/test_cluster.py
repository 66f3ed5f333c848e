import pytest
import torch

from ddcore.cluster import Clusters, assign, kmeans, kmeans_per_class, voronoi_cells


def blobs(centres, n_per, seed=0, spread=0.1):
    """n_per points around each centre; returns (X, which centre)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.as_tensor(centres, dtype=torch.float32)
    noise = torch.randn(len(centres) * n_per, centres.shape[1], generator=gen)
    X = centres.repeat_interleave(n_per, 0) + spread * noise
    return X, torch.arange(len(centres)).repeat_interleave(n_per)


def same_partition(a, b):
    """True if two id vectors describe the same partition (up to renaming)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_finds_separated_blobs_and_is_seeded():
    X, truth = blobs([[0, 0], [5, 0], [0, 5]], 20)
    c = kmeans(X, 3, seed=0)
    assert isinstance(c, Clusters) and c.k == 3 and c.centroids.shape == (3, 2)
    assert c.ids.dtype == torch.long and c.sizes.tolist() == torch.bincount(c.ids, minlength=3).tolist()
    assert same_partition(c.ids, truth)
    assert torch.equal(kmeans(X, 3, seed=0).ids, c.ids)
    assert torch.equal(assign(X, c.centroids), c.ids)  # labels are nearest-centroid labels


def test_kmeans_flattens_images():
    images = torch.randn(12, 1, 4, 4)
    c = kmeans(images, 2, seed=1)
    assert c.centroids.shape == (2, 16) and c.ids.shape == (12,)


@pytest.mark.parametrize("k", [0, 11])
def test_kmeans_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k="):
        kmeans(torch.randn(10, 2), k, seed=0)


def test_kmeans_rejects_non_int_k_and_nan():
    with pytest.raises(TypeError, match="k must be an int"):
        kmeans(torch.randn(10, 2), 2.0, seed=0)
    X = torch.randn(10, 2)
    X[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        kmeans(X, 2, seed=0)


def test_kmeans_per_class_gives_global_ids_and_classes():
    X, blob = blobs([[0, 0], [4, 0], [0, 4], [4, 4]], 10)
    labels = torch.tensor([0, 0, 2, 2]).repeat_interleave(10)  # class 1 absent
    c = kmeans_per_class(X, labels, k=2, seed=0)
    assert c.k == 4 and c.cluster_class.tolist() == [0, 0, 2, 2]
    assert same_partition(c.ids, blob)
    # every point's cluster belongs to its own class
    assert torch.equal(c.cluster_class[c.ids], labels)
    assert c.sizes.sum() == len(X)


def test_kmeans_per_class_caps_k_at_the_class_size():
    X = torch.randn(5, 3)
    c = kmeans_per_class(X, torch.tensor([0, 0, 0, 1, 1]), k=4, seed=0)
    assert c.cluster_class.tolist() == [0, 0, 0, 1, 1]
    assert sorted(c.ids.tolist()) == [0, 1, 2, 3, 4]


def test_assign_nearest_and_within_class():
    centroids = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    X = torch.tensor([[1.0, 0.0], [9.0, 0.0]])
    assert assign(X, centroids).tolist() == [0, 1]
    # restricted to the class's own centroids, even when another class's is closer
    assert assign(X, centroids, torch.tensor([1, 1]), torch.tensor([0, 1])).tolist() == [1, 1]
    with pytest.raises(ValueError, match="no centroid"):
        assign(X, centroids, torch.tensor([2, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="dimension"):
        assign(X, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="both"):
        assign(X, centroids, labels=torch.tensor([0, 1]))


def test_voronoi_cells_use_the_nearest_synthetic_image_of_the_same_class():
    gen = torch.Generator().manual_seed(0)
    real, syn = torch.randn(30, 5, generator=gen), torch.randn(6, 5, generator=gen)
    labels_real, labels_syn = torch.arange(30) % 3, torch.tensor([0, 0, 1, 1, 2, 2])
    cells = voronoi_cells(real, labels_real, syn, labels_syn)
    for i in range(30):
        same = torch.nonzero(labels_syn == labels_real[i]).flatten()
        best = same[torch.cdist(real[i : i + 1], syn[same]).argmin()]
        assert cells[i] == best
    assert torch.equal(labels_syn[cells], labels_real)
    # soft synthetic labels are read by their argmax
    soft = torch.nn.functional.one_hot(labels_syn, 3).float()
    assert torch.equal(voronoi_cells(real, labels_real, syn, soft), cells)


def test_voronoi_cells_raise_for_a_class_without_synthetic_images():
    with pytest.raises(ValueError, match="class 2"):
        voronoi_cells(torch.randn(3, 2), torch.tensor([0, 1, 2]), torch.randn(2, 2), torch.tensor([0, 1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_voronoi_cells_on_cuda():
    real, syn = torch.randn(50, 8), torch.randn(10, 8)
    labels_real, labels_syn = torch.arange(50) % 5, torch.arange(10) % 5
    cpu = voronoi_cells(real, labels_real, syn, labels_syn)
    gpu = voronoi_cells(real.cuda(), labels_real.cuda(), syn.cuda(), labels_syn.cuda())
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
