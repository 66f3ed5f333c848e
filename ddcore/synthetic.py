"""The synthetic set: what every distillation method returns and every evaluation takes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .io import load_tensors, save_tensors

FORMAT_VERSION = 1


@dataclass(eq=False, repr=False)
class SyntheticSet:
    """Images (normalised like the data set) with hard or soft labels and provenance.

    `extras` holds any further tensors a method needs to keep (e.g. D3's priors and decoder);
    `meta` holds method, dataset, ipc, seed, num_classes and the method's config as plain values.
    """

    images: torch.Tensor  # (n, C, H, W)
    labels: torch.Tensor  # (n,) int64, or (n, num_classes) float soft labels
    meta: dict = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.images.dim() != 4:
            raise ValueError(f"images must be (n, C, H, W), got {tuple(self.images.shape)}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"{self.labels.shape[0]} labels for {self.images.shape[0]} images")

    def __repr__(self) -> str:
        kind = "soft" if self.soft_labels else "hard"
        return (
            f"SyntheticSet(method={self.meta.get('method')!r}, dataset={self.meta.get('dataset')!r}, "
            f"ipc={self.meta.get('ipc')}, images={tuple(self.images.shape)}, {kind} labels)"
        )

    @property
    def soft_labels(self) -> bool:
        return self.labels.is_floating_point()

    @property
    def hard_labels(self) -> torch.Tensor:
        """Class of each image (argmax of soft labels)."""
        return self.labels.argmax(1) if self.soft_labels else self.labels

    def parts(self) -> list[SyntheticSet]:
        """The per-subtask sets an aggregated set was made of (ddcore.federated.aggregate), with
        their rows, global labels, meta and extras; [self] for a set that is not aggregated."""
        if "parts" not in self.meta:
            return [self]
        out, start = [], 0
        for i, (meta, size) in enumerate(zip(self.meta["parts"], self.meta["sizes"])):
            prefix = f"subtask_{i}."
            extras = {k[len(prefix) :]: v for k, v in self.extras.items() if k.startswith(prefix)}
            rows = slice(start, start + size)
            out.append(SyntheticSet(self.images[rows], self.labels[rows], meta, extras))
            start += size
        return out

    def snapshot(self, iteration: int) -> SyntheticSet:
        """The set as it was after `iteration` steps (0 = its initialisation), kept when it was
        distilled with `distill(..., snapshots=[...])`; same labels, no extras."""
        key = f"snapshot_{iteration}.images_syn"
        if key not in self.extras:
            kept = self.meta.get("snapshots", [])
            raise KeyError(
                f"no snapshot of the images at iteration {iteration}; this set kept {kept} "
                f"(pass snapshots=[...] to distill; methods that learn no images keep none)"
            )
        meta = {**self.meta, "iteration": iteration}
        meta.pop("snapshots", None)
        return SyntheticSet(self.extras[key].clone(), self.labels.clone(), meta)

    def save(self, path: str | os.PathLike) -> None:
        """Write one safetensors file (atomically); no pickle involved."""
        tensors = {"images": self.images, "labels": self.labels}
        tensors.update({f"extra.{k}": v for k, v in self.extras.items()})
        save_tensors(path, tensors, {"kind": "SyntheticSet", "version": FORMAT_VERSION, **self.meta})

    @classmethod
    def load(cls, path: str | os.PathLike) -> SyntheticSet:
        tensors, meta = load_tensors(path)
        if meta.pop("kind", None) != "SyntheticSet":
            raise ValueError(f"{path} holds no SyntheticSet")
        version = meta.pop("version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"{path} has format version {version}; this ddcore reads {FORMAT_VERSION}")
        extras = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
        return cls(tensors["images"], tensors["labels"], meta, extras)
