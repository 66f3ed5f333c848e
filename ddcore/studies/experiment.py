"""A grid of (method, ipc) runs: distill, cache, evaluate. What the notebooks call in one line.

Each cell's synthetic set and evaluation rows are written to `cache_dir` as they finish, so a
long run that stops can be started again and skips the finished cells (and resumes a
half-finished distillation from its checkpoint). `image_drift` says how far a set's images moved
from their initialisation, from the snapshots a grid asked for.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pandas as pd
import torch

from ..checks import check_writable_dir
from ..data import Dataset
from ..distill import distill, method_config
from ..evaluate import EvalConfig, evaluate_synthetic
from ..io import atomic_write_bytes
from ..synthetic import SyntheticSet


def cell_name(dataset: Dataset, method: str, ipc: int, seed: int, tag: str = "") -> str:
    """File stem of one cell, built from its parameters (provenance in the name)."""
    return f"{dataset.name}_{method}{tag}_ipc{ipc}_seed{seed}"


def distill_cached(
    method: str,
    dataset: Dataset,
    ipc: int,
    seed: int,
    options: dict,
    device,
    cache_dir: Path | None,
    progress: bool,
    tag: str = "",
    snapshots: tuple[int, ...] = (),
) -> SyntheticSet:
    """distill(), or load the set a previous call with the same parameters saved.

    snapshots: iterations whose images the set keeps (distill's `snapshots`, 0 = the start; see
    SyntheticSet.snapshot). When given, the set also keeps its loss curve, meta['loss_curve'] =
    [[iteration, loss], ...] from distill's on_iteration (a resumed run's curve starts where it
    resumed), and a cached set is reused only if it kept every requested snapshot.
    """
    snapshots = tuple(sorted(set(snapshots)))
    curve: list[list[float]] = []
    hook = (lambda it, loss, seconds: curve.append([it, loss])) if snapshots else None
    kwargs = dict(seed=seed, device=device, progress=progress, snapshots=snapshots, on_iteration=hook)
    if cache_dir is None:
        return _with_curve(distill(method, dataset, ipc, **kwargs, **options), curve, snapshots)
    config = repr(method_config(method, **options))
    # The config's hash in the name: a changed option never meets a stale checkpoint.
    digest = hashlib.sha1(config.encode()).hexdigest()[:8]
    stem = cache_dir / f"{cell_name(dataset, method, ipc, seed, tag)}_{digest}"
    path = stem.with_suffix(".safetensors")
    if path.exists():
        syn = SyntheticSet.load(path)
        if syn.meta.get("config_repr") == config and _kept_snapshots(syn, snapshots):
            return syn
    start = time.perf_counter()
    syn = distill(method, dataset, ipc, checkpoint=stem.with_suffix(".ckpt"), resume=True, **kwargs, **options)
    syn = _with_curve(syn, curve, snapshots)
    syn.meta["seconds"] = time.perf_counter() - start
    syn.meta["config_repr"] = config
    syn.save(path)
    stem.with_suffix(".ckpt").unlink(missing_ok=True)  # the finished set replaces its checkpoint
    return syn


def _with_curve(syn: SyntheticSet, curve: list, snapshots: tuple[int, ...]) -> SyntheticSet:
    if snapshots:
        syn.meta["loss_curve"] = curve
    return syn


def _kept_snapshots(syn: SyntheticSet, snapshots: tuple[int, ...]) -> bool:
    """Whether a cached set holds what was asked: every snapshot an iterative method can keep, and its curve."""
    if not snapshots or ("snapshots" not in syn.meta and "loss_curve" in syn.meta):
        return True  # nothing asked, or a method that learns no images (it keeps none)
    return "loss_curve" in syn.meta and set(snapshots) <= set(syn.meta.get("snapshots", []))


def run_grid(
    dataset: Dataset,
    methods: dict[str, dict],
    ipcs: list[int],
    eval_cfg: EvalConfig,
    seed: int = 0,
    device=None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    snapshots: dict[str, list[int]] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Distill and evaluate every (method, ipc); methods map names to their options.

    snapshots: per method, the iterations whose images its sets keep, with their loss curve (see
    distill_cached), e.g. {'dm': [0, 20, 80]}. Returns the evaluation rows (with distillation
    seconds) and the synthetic sets by (method, ipc).
    """
    if cache_dir is not None:
        check_writable_dir("cache_dir", cache_dir)
        cache_dir = Path(cache_dir)
    for name, options in methods.items():
        method_config(name, **options)  # fail on a typo before any long work starts
    frames, sets = [], {}
    for ipc in ipcs:
        for name, options in methods.items():
            keep = tuple((snapshots or {}).get(name, ()))
            syn = distill_cached(name, dataset, ipc, seed, options, device, cache_dir, progress, snapshots=keep)
            sets[(name, ipc)] = syn
            frames.append(evaluate_cached(syn, dataset, eval_cfg, seed, device, cache_dir, progress))
    return pd.concat(frames, ignore_index=True), sets


def evaluate_cached(syn, dataset, eval_cfg, seed, device, cache_dir, progress) -> pd.DataFrame:
    """evaluate_synthetic, or the rows a previous call with the same set and config saved."""
    # The set's content is in the key: a derived set (e.g. soft labels) never meets stale rows.
    content = hashlib.sha1(syn.images.numpy().tobytes() + syn.labels.numpy().tobytes()).hexdigest()
    key = repr(eval_cfg) + repr(syn.meta.get("config_repr")) + content
    path = None
    if cache_dir is not None:
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        path = cache_dir / f"{cell_name(dataset, syn.meta['method'], syn.meta['ipc'], seed)}_eval_{digest}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved["key"] == key:
                return pd.DataFrame(saved["rows"])
    df = evaluate_synthetic(syn, dataset, eval_cfg, seed=seed, device=device, progress=progress)
    df["distill_seconds"] = syn.meta.get("seconds")
    if path is not None:
        atomic_write_bytes(path, json.dumps({"key": key, "rows": df.to_dict("records")}).encode())
    return df


def image_drift(syn: SyntheticSet, dataset: Dataset, start: int = 0) -> torch.Tensor:
    """(n,) how far each image moved from its snapshot at `start` (0: its initialisation) to the end.

    The root-mean-square pixel change on the [0, 1] pixel scale (dataset.to_unit): 0.01 is a change
    no eye sees, 0.1 a visible one. Needs the set distilled with that snapshot (run_grid's snapshots).
    """
    before = dataset.to_unit(syn.snapshot(start).images)
    after = dataset.to_unit(syn.images)
    return (after - before).pow(2).flatten(1).mean(1).sqrt()


def loss_curve(syn: SyntheticSet) -> pd.DataFrame:
    """The loss against the iteration, as distill_cached kept it (columns iteration, loss)."""
    if "loss_curve" not in syn.meta:
        raise KeyError("this set kept no loss curve; distill it with snapshots (run_grid's snapshots=)")
    return pd.DataFrame(syn.meta["loss_curve"], columns=["iteration", "loss"])
