import pytest
import torch

from ddcore.subpop import make_rare_subgroups, transform_unit


def test_rare_subgroup_in_every_training_class(small):
    before = small.images_train.clone()
    rare_set, train_groups, test_groups = make_rare_subgroups(small, rare_fraction=0.1, seed=0)
    assert rare_set.name == "mnist5k_rare" and rare_set.num_classes == 10
    assert train_groups.shape == small.labels_train.shape and train_groups.dtype == torch.long
    # 10% of the 20 images of each class are rare
    assert torch.bincount(small.labels_train[train_groups == 1], minlength=10).tolist() == [2] * 10
    assert torch.equal(rare_set.labels_train, small.labels_train)
    rare = train_groups == 1
    expected = small.normalize(1 - small.to_unit(small.images_train[rare]))
    torch.testing.assert_close(rare_set.images_train[rare], expected)
    assert torch.equal(rare_set.images_train[~rare], small.images_train[~rare])
    assert torch.equal(small.images_train, before)  # the input is left alone


def test_test_split_holds_both_groups_equally(small):
    rare_set, _, test_groups = make_rare_subgroups(small, seed=0)
    n = len(small.labels_test)
    assert len(rare_set.labels_test) == 2 * n == len(test_groups)
    assert test_groups[:n].eq(0).all() and test_groups[n:].eq(1).all()
    assert torch.equal(rare_set.labels_test, small.labels_test.repeat(2))
    assert torch.equal(rare_set.images_test[:n], small.images_test)
    torch.testing.assert_close(rare_set.images_test[n:], small.normalize(1 - small.to_unit(small.images_test)))


def test_rare_images_are_seeded(small):
    _, a, _ = make_rare_subgroups(small, seed=0)
    _, b, _ = make_rare_subgroups(small, seed=0)
    _, c, _ = make_rare_subgroups(small, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rotate90_transform(small):
    rare_set, groups, _ = make_rare_subgroups(small, rare_fraction=0.25, transform="rotate90", seed=0)
    rare = groups == 1
    assert int(rare.sum()) == 10 * 5
    torch.testing.assert_close(rare_set.images_train[rare], torch.rot90(small.images_train[rare], 1, dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        transform_unit(torch.rand(1, 1, 4, 6), "rotate90")


def test_vflip_on_a_fashion_mnist_base(tmp_path, monkeypatch):
    """The clothes benchmark: fashion_mnist (here a small fake copy of Debian's files), upside down."""
    import numpy as np
    from test_data import _write_debian_folder

    from ddcore import data

    _write_debian_folder(tmp_path / "fm", np.random.default_rng(0), n_train=60, n_test=20)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "fm")
    fashion = data.load_dataset("fashion_mnist")
    rare_set, groups, test_groups = make_rare_subgroups(fashion, rare_fraction=0.2, transform="vflip", seed=0)
    rare = groups == 1
    assert rare_set.name == "fashion_mnist_rare" and 0 < int(rare.sum()) < 60
    torch.testing.assert_close(rare_set.images_train[rare], torch.flip(fashion.images_train[rare], dims=(-2,)))
    assert torch.equal(rare_set.images_train[~rare], fashion.images_train[~rare])
    torch.testing.assert_close(rare_set.images_test[test_groups == 1], torch.flip(fashion.images_test, dims=(-2,)))
    from ddcore.augment import dsa_for

    assert "flip" in dsa_for(rare_set.name).strategy  # clothes keep DSA's horizontal flips


def test_every_class_keeps_both_groups_at_extreme_fractions(small):
    for fraction in (0.001, 0.999):
        _, groups, _ = make_rare_subgroups(small, rare_fraction=fraction, seed=0)
        per_class = torch.bincount(small.labels_train[groups == 1], minlength=10)
        assert per_class.min() >= 1 and per_class.max() <= 19


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.2])
def test_rare_fraction_must_lie_in_the_open_interval(small, fraction):
    with pytest.raises(ValueError, match="rare_fraction"):
        make_rare_subgroups(small, rare_fraction=fraction)


def test_unknown_transform_is_refused(small):
    with pytest.raises(ValueError, match=r"transform='blur'.*\['invert', 'rotate90', 'vflip'\]"):
        make_rare_subgroups(small, transform="blur")
