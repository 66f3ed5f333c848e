"""Soft labels from a labeller: a ConvNet trained on the whole real training set.

D3 keeps one soft label per prior (the labeller's softmax on the prior's mean image). To credit
the representation and not the labels, the random baseline gets soft labels from the same
labeller (`with_soft_labels`); `with_hard_labels` gives a D3 set its priors' classes instead, so
D3 with hard labels is evaluated without distilling again. `label_mismatch` measures how often the
labeller disagrees with a prior's class.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from .augment import dsa_for
from .checks import check_int, check_writable_dir
from .data import Dataset, fingerprint
from .io import load_tensors, save_tensors
from .models import ModelConfig, build_model
from .runtime import resolve_device
from .synthetic import SyntheticSet
from .train import TrainConfig, train_network


@dataclass
class LabellerConfig:
    epochs: int = 30  # on the full training set; a weak labeller caps D3 and random+soft alike.
    # mnist5k test accuracy, width 32, 1 thread: 5 epochs 90.7% (notebook 03's
    # CPU run), 12 epochs 96.7% (70 s), 20 epochs 97.8% (100 s)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        check_int("epochs", self.epochs, low=1)


def train_labeller(
    dataset: Dataset, cfg: LabellerConfig, seed: int = 0, device="cpu", root: str | Path | None = None
) -> nn.Module:
    """The labeller network (eval mode, frozen), read from `root` when saved there before."""
    device = resolve_device(device)
    net = build_model(cfg.model, dataset.channels, dataset.num_classes, dataset.im_size)
    path = None
    if root is not None:
        check_writable_dir("labeller folder", root)
        # the data's fingerprint in the key: a subtask's labeller is never taken for another's
        digest = hashlib.sha1((repr(asdict(cfg)) + fingerprint(dataset)).encode()).hexdigest()[:8]
        path = Path(root) / f"labeller_{dataset.name}_{digest}_seed{seed}.safetensors"
    if path is not None and path.exists():
        tensors, _ = load_tensors(path)
        net.load_state_dict(tensors)
        return net.to(device).eval().requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(cfg.model, dataset.channels, dataset.num_classes, dataset.im_size)
    net = net.to(device)
    train_network(
        net,
        dataset.images_train.to(device),
        dataset.labels_train.to(device),
        TrainConfig(epochs=cfg.epochs),
        dsa_for(dataset.name),
        torch.Generator().manual_seed(seed),
    )
    if path is not None:
        save_tensors(path, dict(net.state_dict()), {"kind": "labeller", "config": repr(asdict(cfg))})
    return net.eval().requires_grad_(False)


def soft_labels(
    labeller: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """softmax(labeller(images)) as float32 (n, num_classes) on the CPU, without gradients.

    `labeller` is any callable from images to logits; an nn.Module runs in eval mode on the
    device of its parameters and is put back in its previous mode afterwards.
    """
    check_int("batch_size", batch_size, low=1)
    is_module = isinstance(labeller, torch.nn.Module)
    params = list(labeller.parameters()) if is_module else []
    device = params[0].device if params else images.device
    was_training = is_module and labeller.training
    if is_module:
        labeller.eval()
    try:
        with torch.no_grad():
            out = [labeller(x.to(device)).float().softmax(1).cpu() for x in images.split(batch_size)]
    finally:
        if was_training:
            labeller.train()
    return torch.cat(out)


def with_soft_labels(syn: SyntheticSet, labeller: nn.Module) -> SyntheticSet:
    """A copy of an image set whose labels are the labeller's soft labels (method gets '+soft')."""
    meta = {**syn.meta, "method": f"{syn.meta.get('method')}+soft"}
    return replace(syn, labels=soft_labels(labeller, syn.images), meta=meta, extras=dict(syn.extras))


def label_mismatch(labels: torch.Tensor, classes: torch.Tensor) -> float:
    """Share of rows whose label (a class id, or a soft label's argmax) is not their class."""
    if len(labels) != len(classes):
        raise ValueError(f"{len(labels)} labels for {len(classes)} classes")
    if len(labels) == 0:
        return 0.0
    hard = labels.argmax(1) if labels.is_floating_point() else labels
    return float((hard.cpu() != classes.cpu()).double().mean())


def with_hard_labels(syn: SyntheticSet) -> SyntheticSet:
    """A copy of a D3 set labelled with each prior's class (method gets '+hard').

    Distillation never uses the labels, so this is the set `soft_labels=False` would have given:
    D3 with hard labels costs an evaluation, not another distillation. Priors are stored class by
    class, `lpc` of each.
    """
    lpc, num_classes = syn.meta.get("lpc"), syn.meta.get("num_classes")
    if syn.meta.get("generative") != "d3" or not isinstance(lpc, int) or not isinstance(num_classes, int):
        raise ValueError(
            "with_hard_labels needs a D3 set (meta 'generative' == 'd3' with 'lpc' and "
            f"'num_classes'); got method {syn.meta.get('method')!r}"
        )
    labels = torch.arange(num_classes).repeat_interleave(lpc)
    meta = {**syn.meta, "method": f"{syn.meta.get('method')}+hard", "label_mismatch": 0.0}
    return replace(syn, labels=labels, meta=meta, extras=dict(syn.extras))
