"""What a synthetic set costs to keep, counted honestly, and its IPC-equivalent budget.

Counted: every tensor needed to train a student from the set. For image sets: the images and
their labels (hard labels count one value each, soft labels one per class). For D3: the priors
(mu and logvar), every decoder weight and one soft label per prior; the decoded mean images are
not counted, since they are recomputed from what is kept.

An aggregated set (subtask decomposition) counts each subtask's images or priors and decoder.

IPC-equivalent = values kept / (num_classes x values of one image): the number of real images
per class the same budget would hold.
"""

from __future__ import annotations

import pandas as pd
import torch

from .checks import check_int
from .synthetic import SyntheticSet


def _kept_tensors(syn: SyntheticSet) -> dict[str, list[torch.Tensor]]:
    """The set's tensors by part, as storage counts them (an aggregated set: each subtask's)."""
    kept = {"images": [], "priors": [], "decoder": [], "labels": [syn.labels]}
    for part in syn.parts():
        if part.meta.get("generative") == "d3":
            kept["priors"] += [part.extras["mu"], part.extras["logvar"]]
            kept["decoder"] += [v for k, v in part.extras.items() if k.startswith("decoder.")]
        else:
            kept["images"].append(part.images)
    return kept


def storage(syn: SyntheticSet) -> dict:
    """Values and bytes per part, their totals, and the IPC-equivalent budget of the set."""
    if not isinstance(syn, SyntheticSet):
        raise TypeError(f"syn must be a SyntheticSet, got {type(syn).__name__}")
    num_classes = syn.meta.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"syn.meta['num_classes'] must be a positive int to count storage, got {num_classes!r}")
    parts = _kept_tensors(syn)
    out = {}
    for part in ("images", "priors", "decoder", "labels"):
        tensors = parts.get(part, [])
        out[f"{part}_values"] = sum(t.numel() for t in tensors)
        out[f"{part}_bytes"] = sum(t.numel() * t.element_size() for t in tensors)
    out["values"] = sum(out[f"{p}_values"] for p in ("images", "priors", "decoder", "labels"))
    out["bytes"] = sum(out[f"{p}_bytes"] for p in ("images", "priors", "decoder", "labels"))
    image_values = syn.images[0].numel()
    out["ipc_equivalent"] = out["values"] / (num_classes * image_values)
    return out


def storage_table(sets: dict) -> pd.DataFrame:
    """One row per named set: method, ipc and every storage() figure."""
    rows = []
    for name, syn in sets.items():
        rows.append({"set": str(name), "method": syn.meta.get("method"), "ipc": syn.meta.get("ipc"), **storage(syn)})
    return pd.DataFrame(rows)


def d3_ipc_equivalent(
    num_classes: int, lpc: int, latent_dim: int, decoder_values: int, image_values: int, num_decoders: int = 1
) -> float:
    """The storage model of D3: IPC-equivalent of lpc priors per class, their soft labels and
    `num_decoders` decoders (one per subtask) of `decoder_values` weights each.

    Per class: lpc * (2 * latent_dim + num_classes) values; shared: the decoders. The decoder's
    cost is spread over the classes, so it pays off as num_classes grows; the soft labels grow
    with num_classes too, so the curve has a minimum.
    """
    for name, value in (
        ("num_classes", num_classes),
        ("lpc", lpc),
        ("latent_dim", latent_dim),
        ("image_values", image_values),
        ("num_decoders", num_decoders),
    ):
        check_int(name, value, low=1)
    check_int("decoder_values", decoder_values, low=0)
    values = num_classes * lpc * (2 * latent_dim + num_classes) + num_decoders * decoder_values
    return values / (num_classes * image_values)
