"""Soft labels from a labeller: a ConvNet trained on the whole real training set.

D3 keeps one soft label per prior (the labeller's softmax on the prior's mean image). To credit
the representation and not the labels, the random baseline gets soft labels from the same
labeller (`with_soft_labels`).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from .augment import dsa_for
from .checks import check_int, check_writable_dir
from .data import Dataset
from .io import load_tensors, save_tensors
from .models import ModelConfig, build_model
from .synthetic import SyntheticSet
from .train import TrainConfig, train_network


@dataclass
class LabellerConfig:
    epochs: int = 30        # on the full training set; mnist5k reaches about 97-98% test accuracy
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        check_int("epochs", self.epochs, low=1)


def train_labeller(dataset: Dataset, cfg: LabellerConfig, seed: int = 0, device="cpu",
                   root: str | Path | None = None) -> nn.Module:
    """The labeller network (eval mode, frozen), read from `root` when saved there before."""
    net = build_model(cfg.model, dataset.channels, dataset.num_classes, dataset.im_size)
    path = None
    if root is not None:
        check_writable_dir("labeller folder", root)
        digest = hashlib.sha1(repr(asdict(cfg)).encode()).hexdigest()[:8]
        path = Path(root) / f"labeller_{dataset.name}_{digest}_seed{seed}.safetensors"
    if path is not None and path.exists():
        tensors, _ = load_tensors(path)
        net.load_state_dict(tensors)
        return net.to(device).eval().requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(cfg.model, dataset.channels, dataset.num_classes, dataset.im_size)
    net = net.to(device)
    train_network(net, dataset.images_train.to(device), dataset.labels_train.to(device),
                  TrainConfig(epochs=cfg.epochs), dsa_for(dataset.name), torch.Generator().manual_seed(seed))
    if path is not None:
        save_tensors(path, dict(net.state_dict()), {"kind": "labeller", "config": repr(asdict(cfg))})
    return net.eval().requires_grad_(False)


@torch.no_grad()
def soft_labels(labeller: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The labeller's softmax on each image: (N, num_classes), rows summing to 1."""
    device = next(labeller.parameters()).device
    was_training = labeller.training
    labeller.eval()
    out = torch.cat([labeller(x.to(device)).softmax(1).cpu() for x in images.split(batch_size)])
    labeller.train(was_training)
    return out


def with_soft_labels(syn: SyntheticSet, labeller: nn.Module) -> SyntheticSet:
    """A copy of an image set whose labels are the labeller's soft labels (method gets '+soft')."""
    meta = {**syn.meta, "method": f"{syn.meta.get('method')}+soft"}
    return replace(syn, labels=soft_labels(labeller, syn.images), meta=meta)
