"""Argument checks shared by every public entry point.

Each helper raises a ValueError or TypeError whose message names the argument, the value
that was given and what is allowed, so a mistyped notebook parameter fails in its own cell
before any long work starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import torch


def check_choice(name: str, value, allowed: Iterable) -> None:
    """Raise ValueError unless `value` is one of `allowed`."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {allowed}")


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> None:
    """Raise unless `value` is an int in [low, high] (either bound may be None)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if low is not None and value < low:
        raise ValueError(f"{name}={value} is too small; it must be >= {low}")
    if high is not None and value > high:
        raise ValueError(f"{name}={value} is too large; it must be <= {high}")


def check_float(name: str, value, low: float | None = None, high: float | None = None, low_open: bool = False) -> None:
    """Raise unless `value` is a finite real number in the given range.

    `low_open=True` excludes `low` itself, e.g. alpha in (0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}={value} is outside {bracket}{low}, {high if high is not None else 'inf'}]")
    if high is not None and value > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}={value} is outside {bracket}{low}, {high}]")


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise ValueError if a tensor holds NaN or Inf."""
    if not torch.is_tensor(tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} holds {bad} NaN or Inf values; clean the input first")


def check_images(
    name: str, images: torch.Tensor, channels: int | None = None, im_size: tuple[int, int] | None = None
) -> None:
    """Raise unless `images` is a finite float (N, C, H, W) tensor of the expected shape."""
    if not torch.is_tensor(images) or images.dim() != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{name} must be a 4-D tensor (N, C, H, W), got {shape}")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"{name} has {images.shape[1]} channels; this model expects {channels}")
    if im_size is not None and tuple(images.shape[-2:]) != tuple(im_size):
        raise ValueError(f"{name} has image size {tuple(images.shape[-2:])}; this model expects {tuple(im_size)}")
    check_finite(name, images)


def check_labels(name: str, labels: torch.Tensor, num_classes: int) -> None:
    """Raise unless hard labels lie in [0, num_classes) or soft labels have num_classes columns."""
    if labels.is_floating_point():
        if labels.dim() != 2 or labels.shape[1] != num_classes:
            raise ValueError(f"soft {name} must have shape (N, {num_classes}), got {tuple(labels.shape)}")
        check_finite(name, labels)
        return
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes - 1}]; got values from {int(labels.min())} to {int(labels.max())}"
        )


def check_writable_dir(name: str, path: str | os.PathLike) -> None:
    """Create `path` if needed and raise ValueError if files cannot be written there."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{name}={str(path)!r} cannot be created: {err.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"{name}={str(path)!r} is not writable")


# What a notebook parameter annotated with each type may hold (papermill -p gives an int for "1",
# which a float parameter accepts; bool is an int subclass, which no number parameter accepts).
_PARAMETER_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,), list: (list, tuple), dict: (dict,)}


def check_parameters(namespace: dict) -> None:
    """Raise TypeError naming every notebook parameter whose value does not fit its annotation.

    Call it as `check_parameters(globals())` in the first cell after the parameters cell: the
    annotated assignments there (`ipc: int = 10  # ...`) fill `__annotations__`, and papermill's
    injected cell overrides the values without annotations, so a `-p ipc ten` fails here, by name.
    """
    wrong = []
    for name, kind in namespace.get("__annotations__", {}).items():
        allowed = _PARAMETER_TYPES.get(kind)
        value = namespace.get(name)
        if allowed is None or name not in namespace:
            continue
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, allowed):
            wrong.append(f"{name}={value!r} ({type(value).__name__}, expected {kind.__name__})")
    if wrong:
        raise TypeError("notebook parameter(s) of the wrong type: " + "; ".join(wrong))
