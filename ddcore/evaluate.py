"""The field's evaluation protocol: train fresh networks on a synthetic set, test on real data.

`evaluate_synthetic` returns a tidy DataFrame (one row per trained network) with the final-epoch
accuracy (never the best epoch seen), per-class accuracy and, when test subgroup ids are given,
per-subgroup and worst-subgroup accuracy. `summarize` turns it into mean +- std per method.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
import torch

from .accel import AccelConfig, autocast, check_accel, maybe_compile, to_memory_format
from .augment import dsa_for
from .checks import check_choice, check_images, check_int, check_labels
from .data import Dataset
from .models import ModelConfig, build_model
from .runtime import resolve_device
from .students import train_side_by_side
from .synthetic import SyntheticSet
from .train import TrainConfig, predict, train_network


@dataclass
class EvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    num_nets: int = 3  # networks trained from different seeds; mean and std over them
    dsa: bool = True  # DSA while training the student (the papers' protocol for DSA/DM/MTT)
    accel: AccelConfig = field(default_factory=AccelConfig)  # bf16 / channels_last / compile (GPU speed)
    # Train the num_nets students together as one vmapped network (students.py): the same students
    # up to float rounding, with all their activations in memory at once. Off: not faster on the
    # CPU. Measured: 3 students, ConvNet-3 width 128, mnist5k, random real images, DSA on; 1 thread,
    # alternating A/B in one process, median of 7 (2-core machine loaded by other jobs), s/epoch
    # of the 3, one after the other vs together: ipc 1: 0.309 vs 0.306 (x0.99); ipc 10: 2.32 vs
    # 2.53 (x1.09, slower). The convolutions' arithmetic dominates, and 3 students need it 3 times
    # either way. On a GPU it should help by design (one launch for 3 small batches): not measured.
    # Raises for accel.channels_last / accel.compile, and for a chunk_size that splits a batch.
    side_by_side: bool = False

    def __post_init__(self):
        check_accel("accel", self.accel)
        check_int("num_nets", self.num_nets, low=1)
        check_int("epochs", self.train.epochs, low=1)
        check_side_by_side(self)


def check_side_by_side(cfg: EvalConfig) -> None:
    """Raise for side_by_side settings the side-by-side loop does not support (never ignore them)."""
    if not isinstance(cfg.side_by_side, bool):
        raise TypeError(f"side_by_side must be True or False, got {cfg.side_by_side!r}")
    for name in ("channels_last", "compile"):
        if cfg.side_by_side and getattr(cfg.accel, name):
            raise NotImplementedError(
                f"EvalConfig(side_by_side=True) does not support accel.{name}=True "
                "(the students run as one vmapped network); use side_by_side=False"
            )


def accuracy_by_group(pred: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> dict[int, float]:
    """Accuracy within each group id present in `groups`."""
    correct = (pred == labels).double()
    return {int(g): float(correct[groups == g].mean()) for g in groups.unique()}


def train_student(
    images: torch.Tensor, labels: torch.Tensor, dataset: Dataset, cfg: EvalConfig, seed: int, device, resample=None
) -> torch.nn.Module:
    """A fresh network trained on (images, labels) with the protocol's recipe.

    resample: optional () -> (images, labels) called at every epoch (see train_network).
    cfg.accel: the network (and images) in channels_last, trained as a torch.compile'd module
    and with its forwards under bf16 autocast; the optimizer steps are fp32 whatever the region.
    The returned network is the plain (uncompiled) module, which shares the trained parameters.
    """
    device = resolve_device(device)
    check_images("images", images, dataset.channels, dataset.im_size)
    check_labels("labels", labels, dataset.num_classes)
    gen = torch.Generator().manual_seed(seed)
    net = to_memory_format(fresh_student(cfg, dataset, seed, device), cfg.accel)
    dsa = dsa_for(dataset.name) if cfg.dsa else None
    # train.py knows nothing of accel: its whole loop runs in the autocast region instead
    with autocast(device, cfg.accel):
        train_network(
            maybe_compile(net, cfg.accel),
            to_memory_format(images.to(device), cfg.accel),
            labels.to(device),
            cfg.train,
            dsa,
            gen,
            resample=resample,
        )
    return net


def fresh_student(cfg: EvalConfig, dataset: Dataset, seed: int, device) -> torch.nn.Module:
    """An untrained student on `device`, initialised from `seed` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg.model, dataset.channels, dataset.num_classes, dataset.im_size).to(device)


def predict_with(net: torch.nn.Module, images: torch.Tensor, accel: AccelConfig | None) -> torch.Tensor:
    """train.predict under accel's autocast (a plain predict by default)."""
    with autocast(next(net.parameters()).device, accel):
        return predict(net, images)


def student_for(syn: SyntheticSet, dataset: Dataset, cfg: EvalConfig, seed: int, device) -> torch.nn.Module:
    """A student trained on a synthetic set: its images, or fresh D3 samples every epoch."""
    images, labels, resample = _student_data(syn, dataset, seed, device)
    return train_student(images, labels, dataset, cfg, seed, device, resample=resample)


def _student_data(syn: SyntheticSet, dataset: Dataset, seed: int, device):
    """(images, labels, resample): the set's images, or for a generative set a first draw (for
    the checks; training draws again at its first epoch) and the sampler of the student `seed`."""
    resample = epoch_sampler(syn, dataset, seed, device)
    images, labels = resample() if resample else (syn.images, syn.labels)
    return images, labels, resample


def students(syn: SyntheticSet, dataset: Dataset, cfg: EvalConfig, seed: int, device) -> Iterator[torch.nn.Module]:
    """The cfg.num_nets students of one evaluation, in order: student k from seed + k.

    One after the other, each trained when it is asked for, or with cfg.side_by_side all
    trained together when the first is asked for; the same students up to float rounding.
    """
    seeds = [seed + k for k in range(cfg.num_nets)]
    if cfg.side_by_side:
        yield from students_side_by_side(syn, dataset, cfg, seeds, device)
    else:
        for s in seeds:
            yield student_for(syn, dataset, cfg, s, device)


def students_side_by_side(
    syn: SyntheticSet, dataset: Dataset, cfg: EvalConfig, seeds: list[int], device
) -> list[torch.nn.Module]:
    """student_for of every seed, trained together (students.train_side_by_side)."""
    check_side_by_side(cfg)
    device = resolve_device(device)
    drawn = [_student_data(syn, dataset, s, device) for s in seeds]
    for images, labels, _ in drawn:
        check_images("images", images, dataset.channels, dataset.im_size)
        check_labels("labels", labels, dataset.num_classes)
    nets = [fresh_student(cfg, dataset, s, device) for s in seeds]
    data = [(images.to(device), labels.to(device)) for images, labels, _ in drawn]
    generators = [torch.Generator().manual_seed(s) for s in seeds]  # as train_student's, per seed
    with autocast(device, cfg.accel):
        train_side_by_side(
            nets,
            data,
            cfg.train,
            dsa_for(dataset.name) if cfg.dsa else None,
            generators,
            [resample for *_, resample in drawn],
        )
    return nets


def epoch_sampler(syn: SyntheticSet, dataset: Dataset, seed: int, device):
    """For a generative set (D3, or an aggregate of D3 subtasks): a function giving each epoch's
    fresh images and labels; None for a set of fixed images."""
    parts = syn.parts()
    if not any(p.meta.get("generative") for p in parts):
        return None
    gen, device = torch.Generator().manual_seed(seed), resolve_device(device)
    samplers = [_part_sampler(p, dataset, gen, device) for p in parts]

    def sample():
        drawn = [s() for s in samplers]
        return torch.cat([x for x, _ in drawn]), torch.cat([y for _, y in drawn])

    return sample


def _part_sampler(part: SyntheticSet, dataset: Dataset, gen: torch.Generator, device):
    kind = part.meta.get("generative")
    if kind is None:
        images, labels = part.images.to(device), part.labels.to(device)
        return lambda: (images, labels)
    if kind != "d3":
        raise ValueError(f"unknown generative set kind {kind!r}; this ddcore knows 'd3'")
    from .decoder import epoch_images, load_decoder  # evaluation knows the decoder, not the method

    decoder = load_decoder(part, dataset.channels, dataset.im_size).to(device)
    mu, logvar, labels = part.extras["mu"].to(device), part.extras["logvar"].to(device), part.labels.to(device)
    return lambda: epoch_images(decoder, mu, logvar, labels, dataset.normalize, gen)


def evaluate_synthetic(
    syn: SyntheticSet,
    dataset: Dataset,
    cfg: EvalConfig | None = None,
    seed: int = 0,
    device=None,
    test_groups: torch.Tensor | None = None,
    progress: bool = True,
    test_images: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Train cfg.num_nets students on `syn` and test each on the data set's test split.

    test_groups: optional subgroup id of every test image, for per-subgroup accuracy.
    test_images: optional replacement test images (e.g. corrupted), same labels and order.
    progress: a bar over the students (each takes minutes at the papers' settings on a CPU), on by
        default as distill's is; the notebooks' helpers pass their own `progress` parameter.
    """
    cfg = cfg or EvalConfig()
    _check_eval_inputs(syn, dataset, test_groups)
    images_test = dataset.images_test if test_images is None else test_images
    check_images("test_images", images_test, dataset.channels, dataset.im_size)
    rows = []
    bar = _progress(students(syn, dataset, cfg, seed, device), progress, syn, cfg.num_nets)
    for k, net in enumerate(bar):
        pred = predict_with(net, images_test, cfg.accel)
        rows.append(_row(syn, dataset, cfg, seed + k, k, pred, test_groups))
        if progress:
            bar.set_postfix(last_accuracy=f"{rows[-1]['accuracy']:.3f}")
    return pd.DataFrame(rows)


def _check_eval_inputs(syn, dataset: Dataset, test_groups: torch.Tensor | None) -> None:
    """The checks both evaluate_synthetic and evaluate_robustness make before training anything."""
    if not isinstance(syn, SyntheticSet):
        raise TypeError(f"syn must be a SyntheticSet, got {type(syn).__name__}")
    if test_groups is not None and len(test_groups) != len(dataset.labels_test):
        raise ValueError(f"test_groups has {len(test_groups)} ids for {len(dataset.labels_test)} test images")


def _row(syn, dataset, cfg, seed, k, pred, test_groups) -> dict:
    labels = dataset.labels_test
    per_class = accuracy_by_group(pred, labels, labels)
    row = {
        "method": syn.meta.get("method"),
        "dataset": dataset.name,
        "ipc": syn.meta.get("ipc"),
        "model": cfg.model.name,
        "net": k,
        "seed": seed,
        "epochs": cfg.train.epochs,
        "accuracy": float((pred == labels).double().mean()),
        "worst_class_accuracy": min(per_class.values()),
    }
    row.update({f"class_{c}": acc for c, acc in per_class.items()})
    if test_groups is not None:
        per_group = accuracy_by_group(pred, labels, test_groups)
        row.update({f"group_{g}": acc for g, acc in per_group.items()})
        row["worst_group_accuracy"] = min(per_group.values())
    return row


def _progress(it, enabled, syn, total: int):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=f"evaluate {syn.meta.get('method')} ipc={syn.meta.get('ipc')}")


def summarize(
    results: pd.DataFrame, metrics: tuple[str, ...] = ("accuracy",), by: tuple[str, ...] = ("method", "ipc")
) -> pd.DataFrame:
    """Mean and std (over networks) of each metric per method and ipc, in percent."""
    for m in metrics:
        check_choice("metric", m, list(results.columns))
    grouped = results.groupby(list(by), sort=False)[list(metrics)]
    out = (grouped.mean() * 100).add_suffix("_mean").join((grouped.std(ddof=0) * 100).add_suffix("_std"))
    out["nets"] = grouped.size()
    return out.reset_index()


def format_mean_std(summary: pd.DataFrame, metric: str = "accuracy") -> pd.Series:
    """'96.1 +- 0.3' strings for a summarize() table."""
    return summary[f"{metric}_mean"].map("{:.1f}".format) + " +- " + summary[f"{metric}_std"].map("{:.1f}".format)


def improvement_over_random(
    results: pd.DataFrame, metric: str = "accuracy", baseline: str = "random", by: str = "ipc"
) -> pd.DataFrame:
    """Each method's mean metric minus that of `baseline` at the same `by` value (percentage points).

    baseline='random+soft', by='budget' compares at equal storage with the same soft labels.
    """
    means = results.groupby(["method", by])[metric].mean().mul(100).rename("mean").reset_index()
    base = means[means.method == baseline].set_index(by)["mean"]
    if base.empty:
        raise ValueError(f"results hold no {baseline!r} rows to compare with; evaluate that baseline too")
    means[f"over_{baseline}"] = means["mean"] - means[by].map(base)
    return means


# =====================================================================================
# Robustness, as the robust-distillation paper measures it (Vahidian et al., ICLR 2025)
# =====================================================================================
# Cluster-min accuracy: K-means (K=10) on the whole test set's normalised pixels, labels
# ignored; the min and the mean of per-cluster accuracy. Corruptions of the test set: Gaussian
# noise (variance 0.005 on [0, 1] pixels), Gaussian blur of radius 2, colour inversion.

CORRUPTIONS = ("gaussian_noise", "blur", "invert")
NOISE_VARIANCE = 0.005  # on [0, 1] pixels, then clipped
# "Radius 2" read as PIL's GaussianBlur(radius=2), whose radius is the standard deviation: sigma 2,
# and a kernel of 2 * ceil(3 * sigma) + 1 = 13 taps, which holds 99.7% of the Gaussian's mass.
BLUR_SIGMA = 2.0
BLUR_KERNEL = 13

_TEST_CLUSTERS: dict[tuple, torch.Tensor] = {}  # (name, k, seed, shape, fingerprint) -> cluster ids


def _test_clusters(dataset: Dataset, k: int, seed: int) -> torch.Tensor:
    """K-means ids of the test images (normalised pixels), cached: the test set does not change.

    The key holds a checksum of the images as well as the name, since subsets and variants
    (e.g. make_rare_subgroups) may share or reuse names.
    """
    from .cluster import kmeans

    x = dataset.images_test
    fingerprint = (float(x.sum(dtype=torch.float64)), float(torch.linalg.vector_norm(x.flatten(), dtype=torch.float64)))
    key = (dataset.name, k, seed, tuple(x.shape), fingerprint)
    if key not in _TEST_CLUSTERS:
        _TEST_CLUSTERS[key] = kmeans(x, k, seed).ids.cpu()
    return _TEST_CLUSTERS[key]


def cluster_min_accuracy(pred: torch.Tensor, dataset: Dataset, k: int = 10, seed: int = 0) -> dict:
    """Accuracy within each of k K-means clusters of the test set: {'min', 'mean', 'per_cluster'}.

    `pred` holds the predicted class of every test image, in order. The mean is over clusters
    (each counts once, whatever its size); empty clusters are skipped.
    """
    check_int("k", k, low=1, high=len(dataset.labels_test))
    if pred.shape != dataset.labels_test.shape:
        raise ValueError(
            f"pred has shape {tuple(pred.shape)}; expected one class per test image {tuple(dataset.labels_test.shape)}"
        )
    ids = _test_clusters(dataset, k, seed)
    per_cluster = list(accuracy_by_group(pred.cpu(), dataset.labels_test, ids).values())
    return {"min": min(per_cluster), "mean": sum(per_cluster) / len(per_cluster), "per_cluster": per_cluster}


def corrupt(images_unit: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """A corrupted copy of (N, C, H, W) [0, 1] pixels, still in [0, 1]; seeded where random.

    kind: 'gaussian_noise' (variance NOISE_VARIANCE, clipped), 'blur' (sigma BLUR_SIGMA,
    BLUR_KERNEL taps, reflected borders) or 'invert' (1 - x).
    """
    check_choice("kind", kind, CORRUPTIONS)
    check_images("images_unit", images_unit)
    if kind == "gaussian_noise":
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(images_unit.shape, generator=gen, dtype=images_unit.dtype)
        return (images_unit + NOISE_VARIANCE**0.5 * noise.to(images_unit.device)).clamp(0.0, 1.0)
    if kind == "blur":
        from torchvision.transforms.v2.functional import gaussian_blur

        return gaussian_blur(images_unit, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
    return 1.0 - images_unit


def evaluate_robustness(
    syn: SyntheticSet,
    dataset: Dataset,
    cfg: EvalConfig | None = None,
    seed: int = 0,
    device=None,
    test_groups: torch.Tensor | None = None,
    k: int = 10,
    cluster_seed: int = 0,
    corruptions: tuple[str, ...] = CORRUPTIONS,
    progress: bool = True,
) -> pd.DataFrame:
    """`evaluate_synthetic` plus the paper's robustness metrics, one row per trained network.

    Adds cluster_min_accuracy and cluster_mean_accuracy (K-means with k clusters, seeded by
    cluster_seed, shared by every network), and accuracy_<kind> for each corruption of the test
    set (seeded by `seed`, the same for every network); group_<g> and worst_group_accuracy when
    test_groups are given.
    """
    cfg = cfg or EvalConfig()
    _check_eval_inputs(syn, dataset, test_groups)
    for kind in corruptions:
        check_choice("corruption", kind, CORRUPTIONS)
    unit = dataset.to_unit(dataset.images_test)
    corrupted = {kind: dataset.normalize(corrupt(unit, kind, seed)) for kind in corruptions}
    rows = []
    for n, net in enumerate(_progress(students(syn, dataset, cfg, seed, device), progress, syn, cfg.num_nets)):
        pred = predict_with(net, dataset.images_test, cfg.accel)
        row = _row(syn, dataset, cfg, seed + n, n, pred, test_groups)
        clustered = cluster_min_accuracy(pred, dataset, k, cluster_seed)
        row["cluster_min_accuracy"], row["cluster_mean_accuracy"] = clustered["min"], clustered["mean"]
        for kind, images in corrupted.items():
            row[f"accuracy_{kind}"] = float(
                (predict_with(net, images, cfg.accel) == dataset.labels_test).double().mean()
            )
        rows.append(row)
    return pd.DataFrame(rows)
