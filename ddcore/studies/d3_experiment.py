"""Accuracy against storage: random (hard and soft labels), DM, MTT and D3 at equal budgets.

The budget is in IPC-equivalents (ddcore.storage). Image methods at budget B keep B images per
class; D3 at budget B keeps B priors per class, their soft labels and the widest decoder that
still fits (`decoder_for_budget`), so no method gets more storage than another. With
`hard_labels=True` the same D3 set is also evaluated with its priors' classes as labels ('d3+hard').
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from ..checks import check_int, check_writable_dir
from ..data import Dataset
from ..decoder import Decoder, DecoderConfig, num_parameters
from ..evaluate import EvalConfig
from ..labels import LabellerConfig, train_labeller, with_hard_labels, with_soft_labels
from ..storage import storage
from .experiment import distill_cached, evaluate_cached


def decoder_size(dataset: Dataset, decoder: DecoderConfig) -> int:
    """Weights of a decoder for this data set's image shape."""
    return num_parameters(Decoder(decoder, dataset.channels, dataset.im_size))


def d3_values(dataset: Dataset, lpc: int, decoder: DecoderConfig) -> int:
    """Values a D3 set keeps: priors, one decoder, one soft label per prior."""
    priors = dataset.num_classes * lpc * (2 * decoder.latent_dim + dataset.num_classes)
    return priors + decoder_size(dataset, decoder)


def decoder_for_budget(
    budget: int, dataset: Dataset, lpc: int, latent_dim: int, max_width: int = 256
) -> DecoderConfig | None:
    """The widest decoder with which D3 fits in `budget` IPC-equivalents; None if none fits."""
    check_int("budget", budget, low=1)
    limit = budget * dataset.num_classes * dataset.images_train[0].numel()
    best = None
    for width in range(1, max_width + 1):
        cfg = DecoderConfig(latent_dim=latent_dim, width=width)
        if d3_values(dataset, lpc, cfg) > limit:
            break
        best = cfg
    return best


def storage_grid(
    dataset: Dataset,
    budgets: list[int],
    methods: dict[str, dict],
    d3_options: dict,
    eval_cfg: EvalConfig,
    labeller: LabellerConfig,
    seed: int = 0,
    device=None,
    cache_dir=None,
    progress: bool = False,
    hard_labels: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Distil and evaluate every method at every budget; one row per trained student.

    methods: image methods and their options (e.g. {'random': {}, 'dm': {...}, 'mtt': {...}});
    'random' is also evaluated with the labeller's soft labels ('random+soft').
    d3_options: D3's options except `decoder`, which each budget sets (latent_dim from
    d3_options['latent_dim'], default DecoderConfig's). A budget too small for any decoder gets no
    D3 row (said in the 'note' column of the random rows). hard_labels: also evaluate each D3 set
    with its priors' classes ('d3+hard', labels.with_hard_labels: no second distillation). D3 rows
    carry `label_mismatch`, the share of priors whose soft label's argmax is not their class.
    """
    if cache_dir is not None:
        check_writable_dir("cache_dir", cache_dir)
        cache_dir = Path(cache_dir)
    d3_options = dict(d3_options)
    latent_dim = d3_options.pop("latent_dim", DecoderConfig().latent_dim)
    root = str(cache_dir) if cache_dir is not None else None
    label_net = train_labeller(dataset, labeller, seed=seed, device=device, root=root)
    frames, sets = [], {}
    for budget in budgets:
        cells = {
            name: distill_cached(name, dataset, budget, seed, opts, device, cache_dir, progress)
            for name, opts in methods.items()
        }
        if "random" in cells:
            cells["random+soft"] = with_soft_labels(cells["random"], label_net)
        decoder = decoder_for_budget(budget, dataset, budget, latent_dim)
        if decoder is not None:
            opts = {**d3_options, "decoder": decoder, "labeller": labeller}
            if root is not None and "experts_dir" not in opts:
                opts["experts_dir"] = root
            cells["d3"] = distill_cached("d3", dataset, budget, seed, opts, device, cache_dir, progress)
            if hard_labels:
                cells["d3+hard"] = with_hard_labels(cells["d3"])
        for name, syn in cells.items():
            rows = evaluate_cached(syn, dataset, eval_cfg, seed, device, cache_dir, progress)
            s = storage(syn)
            rows = rows.assign(
                method=name,
                budget=budget,
                ipc_equivalent=s["ipc_equivalent"],
                bytes=s["bytes"],
                decoder_width=decoder.width if name.startswith("d3") else None,
                label_mismatch=syn.meta.get("label_mismatch"),
                note="" if decoder is not None else "no decoder fits this budget",
            )
            frames.append(rows)
            sets[(name, budget)] = syn
    return pd.concat(frames, ignore_index=True), sets


def d3_sweep(
    dataset: Dataset,
    budget: int,
    values: dict[str, list[int]],
    d3_options: dict,
    eval_cfg: EvalConfig,
    labeller: LabellerConfig,
    seed: int = 0,
    device=None,
    cache_dir=None,
    progress: bool = False,
) -> pd.DataFrame:
    """D3 at one decoder size with lpc or latent_dim varied one at a time (values: name -> list).

    The decoder is the one `decoder_for_budget` picks for (budget, default lpc = budget,
    latent_dim); the storage of each variant is reported, so variants that go over the budget show it.
    A variant two sweeps share (lpc = budget at the default latent_dim) is distilled once, with a cache.
    """
    d3_options = dict(d3_options)
    latent_dim = d3_options.pop("latent_dim", DecoderConfig().latent_dim)
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    base = decoder_for_budget(budget, dataset, budget, latent_dim)
    if base is None:
        raise ValueError(f"no decoder fits budget={budget}; pick a larger budget for the sweep")
    root = str(cache_dir) if cache_dir is not None else None
    frames = []
    for name, choices in values.items():
        if name not in ("lpc", "latent_dim"):
            raise ValueError(f"sweep over lpc or latent_dim, got {name!r}")
        for value in choices:
            decoder = replace(base, latent_dim=value) if name == "latent_dim" else base
            lpc = value if name == "lpc" else budget
            opts = {**d3_options, "decoder": decoder, "labeller": labeller, "lpc": lpc}
            if root is not None and "experts_dir" not in opts:
                opts["experts_dir"] = root
            # the tag names the variant, not the sweep: a run two sweeps share is distilled once
            tag = f"_lpc{lpc}_z{decoder.latent_dim}"
            syn = distill_cached("d3", dataset, budget, seed, opts, device, cache_dir, progress, tag=tag)
            rows = evaluate_cached(syn, dataset, eval_cfg, seed, device, cache_dir, progress)
            frames.append(rows.assign(swept=name, value=value, ipc_equivalent=storage(syn)["ipc_equivalent"]))
    return pd.concat(frames, ignore_index=True)


def decoded_grid_images(syn, dataset: Dataset, samples: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """For a D3 set: each class's first prior's mean image followed by `samples` draws from it.

    Every prior is decoded (means and draws in one batch, as in distillation and evaluation: the
    decoder's batch norm uses the batch's statistics); the first prior of each class is shown.
    """
    from ..decoder import decode_with_means, load_decoder

    decoder = load_decoder(syn, dataset.channels, dataset.im_size)
    lpc = syn.meta["lpc"]
    with torch.no_grad():
        means, draws = decode_with_means(
            decoder,
            syn.extras["mu"],
            syn.extras["logvar"],
            samples,
            dataset.normalize,
            torch.Generator().manual_seed(seed),
        )
    first = torch.arange(dataset.num_classes) * lpc
    draws = draws.view(len(means), samples, *means.shape[1:])[first]
    images = torch.cat([means[first][:, None], draws], 1)
    labels = torch.arange(dataset.num_classes).repeat_interleave(samples + 1)
    return images.flatten(0, 1), labels
