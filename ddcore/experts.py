"""Expert trajectories: networks trained on the real data, their parameters saved every epoch.

Trajectory matching (MTT, Cazenavette et al. 2022) and D3 start a student from an expert's
parameters at epoch t and compare where the student gets with where the expert was at t + M.
Experts are trained once per (data set, config) and stored on disk, one safetensors file per
expert holding an (epochs + 1, num_params) tensor, so a later run (or a crashed one) reuses them.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.func import functional_call

from .augment import dsa_for
from .checks import check_int, check_writable_dir
from .data import Dataset, fingerprint
from .io import load_tensors, save_tensors
from .models import ModelConfig, build_model
from .runtime import resolve_device
from .train import TrainConfig, train_network


@dataclass
class ExpertConfig:
    """The reference buffer recipe: plain SGD (no momentum, no weight decay), DSA, lr 0.01."""

    num_experts: int = 5  # the reference trains 100; a handful already gives varied starts
    epochs: int = 20  # the reference saves 50 epochs
    lr: float = 0.01
    batch_size: int = 256
    dsa: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        check_int("num_experts", self.num_experts, low=1)
        check_int("epochs", self.epochs, low=1)


def flat_params(net: nn.Module) -> torch.Tensor:
    """All parameters of `net` as one detached vector, in named_parameters order."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def unflatten(net: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a flat vector back into {name: tensor} shaped like net's parameters (differentiable)."""
    total = sum(p.numel() for p in net.parameters())
    if total != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} values, the network has {total} parameters")
    out, offset = {}, 0
    for name, p in net.named_parameters():
        out[name] = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


class _Embed(nn.Module):
    """Wraps a network so that functional_call runs its embed() instead of its forward()."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner.embed(x)


def forward_with(net: nn.Module, flat: torch.Tensor, x: torch.Tensor, features: bool = False) -> torch.Tensor:
    """net(x) (or net.embed(x)) computed with the parameters in `flat`, differentiable in both."""
    if any(True for _ in net.buffers()):
        raise ValueError(
            "trajectory matching needs a network without buffers (use norm='instance', 'layer' or 'none', not 'batch')"
        )
    params = unflatten(net, flat)
    if features:
        return functional_call(_Embed(net), {f"inner.{k}": v for k, v in params.items()}, (x,))
    return functional_call(net, params, (x,))


def expert_dir(root: str | Path, dataset: Dataset, cfg: ExpertConfig) -> Path:
    """Folder of the experts for (data set, config): a hash of the config and of the data's
    content is in the name, so experts of one subtask's classes are never reused for another's."""
    digest = hashlib.sha1((repr(asdict(cfg)) + fingerprint(dataset)).encode()).hexdigest()[:8]
    return Path(root) / f"experts_{dataset.name}_{digest}"


def train_expert(dataset: Dataset, cfg: ExpertConfig, seed: int, device) -> torch.Tensor:
    """One trajectory: (epochs + 1, num_params), the initial parameters then one row per epoch."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(cfg.model, dataset.channels, dataset.num_classes, dataset.im_size).to(device)
    images, labels = dataset.images_train.to(device), dataset.labels_train.to(device)
    one_epoch = TrainConfig(
        epochs=1, lr=cfg.lr, momentum=0.0, weight_decay=0.0, batch_size=cfg.batch_size, decay_at_half=False
    )
    dsa = dsa_for(dataset.name) if cfg.dsa else None
    rows = [flat_params(net).cpu()]
    for _ in range(cfg.epochs):  # momentum 0: a fresh optimizer per epoch changes nothing
        train_network(net, images, labels, one_epoch, dsa, gen)
        rows.append(flat_params(net).cpu())
    return torch.stack(rows)


def load_or_train_experts(
    dataset: Dataset, cfg: ExpertConfig, seed: int, device, root: str | Path | None = None, progress: bool = False
) -> list[torch.Tensor]:
    """cfg.num_experts trajectories, read from `root` when there, trained (and saved) otherwise.

    Without `root` they are trained in memory and not kept.
    """
    device = resolve_device(device)
    folder = None
    if root is not None:
        check_writable_dir("experts folder", root)
        folder = expert_dir(root, dataset, cfg)
        folder.mkdir(parents=True, exist_ok=True)
    trajectories = []
    for i in _progress(range(cfg.num_experts), progress):
        path = folder / f"expert_{seed}_{i}.safetensors" if folder else None
        if path is not None and path.exists():
            tensors, meta = load_tensors(path)
            if meta.get("config") != repr(asdict(cfg)):
                raise ValueError(f"{path} was trained with another config: {meta.get('config')}")
            trajectories.append(tensors["trajectory"])
            continue
        traj = train_expert(dataset, cfg, seed=seed * 1000 + i, device=device)
        if path is not None:  # written as soon as it is done: a crash loses at most one expert
            save_tensors(
                path, {"trajectory": traj}, {"kind": "expert", "config": repr(asdict(cfg)), "dataset": dataset.name}
            )
        trajectories.append(traj)
    return trajectories


def final_network(trajectory: torch.Tensor, dataset: Dataset, model: ModelConfig, device) -> nn.Module:
    """The expert at its last epoch as a ready network (eval mode, no gradients)."""
    net = build_model(model, dataset.channels, dataset.num_classes, dataset.im_size)
    with torch.no_grad():
        for p, v in zip(net.parameters(), unflatten(net, trajectory[-1]).values()):
            p.copy_(v)
    return net.to(device).eval().requires_grad_(False)


def _progress(it, enabled):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc="experts")
