"""Distillation methods, registered by name: `distill('dm', dataset, ipc=10)`.

Each method is a function `fn(run: Run, cfg) -> SyntheticSet` with its own config dataclass;
`distill` builds that config from keyword arguments and rejects unknown keys.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from ..accel import AccelConfig, check_accel
from ..checks import check_choice, check_int, check_writable_dir
from ..data import Dataset
from ..runtime import resolve_device
from ..synthetic import SyntheticSet
from .common import Run

_METHODS: dict[str, tuple[Callable, type]] = {}


def register_method(name: str, config_cls: type):
    """Decorator: add a method `fn(run, cfg) -> SyntheticSet` with its config class."""

    def wrap(fn):
        _METHODS[name] = (fn, config_cls)
        return fn

    return wrap


def available_methods() -> list[str]:
    return sorted(_METHODS)


def method_config(method: str, **overrides):
    """The config dataclass of `method` with `overrides`; unknown keys raise a TypeError."""
    check_choice("method", method, available_methods())
    cls = _METHODS[method][1]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"{method} has no option(s) {unknown}; its options are {sorted(fields)}")
    return cls(**overrides)


def distill(
    method: str,
    dataset: Dataset,
    ipc: int,
    seed: int = 0,
    device=None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    config=None,
    on_iteration=None,
    accel: AccelConfig | None = None,
    snapshots: tuple[int, ...] = (),
    **options,
) -> SyntheticSet:
    """Distill `dataset` into `ipc` images per class with a registered method.

    Options go either as keyword arguments (e.g. iterations=200) or as a ready `config`.
    `checkpoint` names a file written every `checkpoint_every` iterations by iterative
    methods; with `resume=True` a run continues from it when it exists. `on_iteration`, when
    given, is called after each iteration of an iterative method with (iteration, loss, seconds
    of its step); bench/run.py times methods with it. A hook with a `watch(params)` method is first
    given the dict of tensors being learned (e.g. "images_syn", updated in place), which is how
    ddcore.live.LiveView shows the images while they change. `accel` (a ddcore.accel.AccelConfig) runs
    the methods' forward passes under bf16 autocast and/or puts fresh networks and images in
    channels_last, for speed on GPUs; None (the default) changes nothing. `snapshots` lists
    iteration counts (0 = the initialisation) at which iterative methods keep a copy of what they
    learn; `SyntheticSet.snapshot(n)` returns the set as it was then (images at a few iterations
    next to their start, or accuracy against iterations from one run).
    """
    check_choice("method", method, available_methods())
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a ddcore.data.Dataset, got {type(dataset).__name__}")
    smallest = min(len(i) for i in dataset.indices_per_class("train"))
    check_int("ipc", ipc, low=1, high=smallest)
    check_int("seed", seed, low=0)
    check_int("checkpoint_every", checkpoint_every, low=1)
    snapshots = tuple(sorted(set(snapshots)))
    for n in snapshots:
        check_int("snapshots", n, low=0)
    accel = check_accel("accel", accel)
    if checkpoint is not None:  # fail now, not after the first checkpoint_every iterations
        check_writable_dir("checkpoint folder", Path(checkpoint).parent)
    if config is None:
        config = method_config(method, **options)
    elif options:
        raise TypeError("pass either config=... or keyword options, not both")
    elif not isinstance(config, _METHODS[method][1]):
        raise TypeError(f"config for {method} must be a {_METHODS[method][1].__name__}, got {type(config).__name__}")
    run = Run(
        dataset=dataset,
        ipc=ipc,
        seed=seed,
        device=resolve_device(device),
        progress=progress,
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        checkpoint_every=checkpoint_every,
        resume=resume,
        on_iteration=on_iteration,
        accel=accel,
        snapshots=snapshots,
    )
    return _METHODS[method][0](run, config)


# Importing the method modules fills the registry.
from . import baselines, d3, dc, dm, mtt  # noqa: E402,F401
