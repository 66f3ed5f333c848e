"""A rare-subgroup benchmark: a small, label-preserving variant inside every class.

`make_rare_subgroups` turns a seeded `rare_fraction` of each class's TRAINING images into a
transformed variant (group 1, rare) and leaves the rest as they are (group 0, common). The test
split holds every test image twice, once as it is and once transformed, so both groups are
equally represented and the gap between them measures the transform alone, on the same content.
A distilled set that only covers the common mode scores well on group 0 and poorly on group 1:
`evaluate_synthetic(..., test_groups=test_groups)` reports both and the worst.

Transforms act on [0, 1] pixels (`dataset.to_unit`) and are normalised back:
- 'invert' (default): 1 - x, colour inversion; keeps every shape, so the label, and is far from
  the common images in pixel space, so a mean-matching method can easily miss it;
- 'rotate90': a quarter turn counter-clockwise (square images only);
- 'vflip': upside down (rows reversed). Meant for clothes (`fashion_mnist`): a garment or shoe
  photographed upside down is still what it was, DSA's +-15 degree rotations and horizontal flips
  never produce it, and it moves every pixel, so a method that covers only the upright mode
  misses it. It is not for digits (an upside-down 6 is a 9).

Any registered data set can be the base (`mnist5k`, `fashion_mnist`, ...).
"""

from __future__ import annotations

import dataclasses

import torch

from .checks import check_choice, check_float, check_int
from .data import Dataset

__all__ = ["make_rare_subgroups", "TRANSFORMS", "transform_unit"]

TRANSFORMS = ("invert", "rotate90", "vflip")


def transform_unit(images_unit: torch.Tensor, transform: str) -> torch.Tensor:
    """Apply a named label-preserving transform to (N, C, H, W) [0, 1] pixels."""
    check_choice("transform", transform, TRANSFORMS)
    if transform == "invert":
        return 1.0 - images_unit
    if transform == "vflip":
        return torch.flip(images_unit, dims=(-2,))
    if images_unit.shape[-1] != images_unit.shape[-2]:
        raise ValueError(f"transform='rotate90' needs square images, got {tuple(images_unit.shape[-2:])}")
    return torch.rot90(images_unit, 1, dims=(-2, -1))


def _transform(dataset: Dataset, images: torch.Tensor, transform: str) -> torch.Tensor:
    """Transform normalised images through [0, 1] pixel space."""
    return dataset.normalize(transform_unit(dataset.to_unit(images), transform))


# The methods' real-image initialisation draws one randperm per class from a generator seeded with
# the run's seed; drawing the rare images the same way would make every initial synthetic image a
# rare one when the seeds are equal. The rare draw is salted so that the two are independent.
RARE_SEED_OFFSET = 7919


def _rare_mask(labels: torch.Tensor, num_classes: int, rare_fraction: float, seed: int) -> torch.Tensor:
    """A seeded random round(rare_fraction * n_c) images of each class (1 to n_c - 1 of them)."""
    gen = torch.Generator().manual_seed(seed + RARE_SEED_OFFSET)
    rare = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < 2:
            continue  # a single image cannot hold both groups
        n_rare = min(max(round(rare_fraction * len(idx)), 1), len(idx) - 1)
        rare[idx[torch.randperm(len(idx), generator=gen)[:n_rare]]] = True
    return rare


def make_rare_subgroups(
    dataset: Dataset, rare_fraction: float = 0.1, transform: str = "invert", seed: int = 0
) -> tuple[Dataset, torch.Tensor, torch.Tensor]:
    """(dataset with a rare transformed subgroup per class, train_groups, test_groups).

    Group ids: 0 common, 1 rare. Train images keep their order (only the rare ones change); the
    test split is the original test images (group 0) followed by their transformed copies
    (group 1), labels repeated. The name becomes f"{name}_rare".
    """
    check_float("rare_fraction", rare_fraction, low=0.0, high=1.0, low_open=True)
    if rare_fraction >= 1.0:
        raise ValueError(f"rare_fraction={rare_fraction} is outside (0, 1): some images must stay common")
    check_choice("transform", transform, TRANSFORMS)
    check_int("seed", seed, low=0)
    rare = _rare_mask(dataset.labels_train, dataset.num_classes, rare_fraction, seed)
    images_train = dataset.images_train.clone()
    images_train[rare] = _transform(dataset, dataset.images_train[rare], transform)
    images_test = torch.cat([dataset.images_test, _transform(dataset, dataset.images_test, transform)])
    n_test = len(dataset.labels_test)
    test_groups = torch.cat([torch.zeros(n_test, dtype=torch.long), torch.ones(n_test, dtype=torch.long)])
    out = dataclasses.replace(
        dataset,
        name=f"{dataset.name}_rare",
        images_train=images_train,
        images_test=images_test,
        labels_test=dataset.labels_test.repeat(2),
    )
    return out, rare.long(), test_groups
