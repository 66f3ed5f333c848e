"""What every method shares: the run's context, real-image sampling, synthetic initialisation,
fresh random networks, and the optimisation loop with checkpoints and resume."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..accel import AccelConfig, to_memory_format
from ..checks import check_choice
from ..data import Dataset
from ..io import load_checkpoint, save_checkpoint
from ..models import ModelConfig, build_model
from ..synthetic import SyntheticSet

INITS = ("real", "noise")


@dataclass
class Run:
    """Everything about one distillation run that is not the method's own config."""

    dataset: Dataset
    ipc: int
    seed: int
    device: torch.device
    progress: bool = True
    checkpoint: Path | None = None
    checkpoint_every: int = 50
    resume: bool = False
    # called after each iteration with (iteration, loss, seconds its step took), e.g. by bench/run.py
    on_iteration: Callable[[int, float, float], None] | None = None
    # bf16 autocast / channels_last for the methods' forward passes (GPU speed; off: no change)
    accel: AccelConfig = field(default_factory=AccelConfig)
    # iteration counts at which to keep a copy of the learned tensors (0 = the initialisation);
    # optimize() fills `kept`, make_set() stores them as extras "snapshot_<n>.<name>"
    snapshots: tuple[int, ...] = ()
    kept: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes


def class_indices(run: Run) -> list[torch.Tensor]:
    return run.dataset.indices_per_class("train")


def sample_real(
    run: Run, per_class: list[torch.Tensor], n: int, generator: torch.Generator, classes: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to n random real images of each class (all classes by default), sorted by class.

    Returns images on the run's device and their class ids (on the CPU, for grouping).
    """
    classes = range(len(per_class)) if classes is None else classes
    picks, groups = [], []
    for c in classes:
        idx = per_class[c]
        chosen = idx[torch.randperm(len(idx), generator=generator)[:n]]
        picks.append(chosen)
        groups.append(torch.full((len(chosen),), c, dtype=torch.long))
    picks = torch.cat(picks)
    return to_memory_format(run.dataset.images_train[picks].to(run.device), run.accel), torch.cat(groups)


def init_synthetic(run: Run, init: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ipc images per class, from random real images or from N(0, 1) noise, sorted by class."""
    check_choice("init", init, INITS)
    labels = torch.arange(run.num_classes).repeat_interleave(run.ipc)
    if init == "real":
        images, _ = sample_real(run, class_indices(run), run.ipc, generator)
    else:
        shape = (len(labels), run.dataset.channels, *run.dataset.im_size)
        images = torch.randn(shape, generator=generator).to(run.device)
    return to_memory_format(images, run.accel).detach().clone(), labels  # clone keeps the format


def fresh_net(run: Run, model: ModelConfig, generator: torch.Generator, num_classes: int | None = None):
    """A randomly initialised network seeded from `generator`, leaving torch's global RNG untouched."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(model, run.dataset.channels, num_classes or run.num_classes, run.dataset.im_size)
    return to_memory_format(net.to(run.device), run.accel)


def make_set(
    run: Run,
    method: str,
    cfg,
    images: torch.Tensor,
    labels: torch.Tensor,
    losses: list[float] | None = None,
    extras: dict | None = None,
) -> SyntheticSet:
    """Wrap a method's result with its provenance."""
    meta = {
        "method": method,
        "dataset": run.dataset.name,
        "ipc": run.ipc,
        "seed": run.seed,
        "num_classes": run.num_classes,
        "config": _plain(cfg),
    }
    if losses is not None:
        meta["final_loss"] = losses[-1] if losses else None
    if not run.accel.is_default:  # recorded only when used, so default sets keep their meta
        meta["accel"] = dataclasses.asdict(run.accel)
    extras = dict(extras or {})
    for n, tensors in sorted(run.kept.items()):
        extras.update({f"snapshot_{n}.{k}": v for k, v in tensors.items()})
    if run.kept:
        meta["snapshots"] = sorted(run.kept)
    # contiguous: channels_last images would be refused by safetensors (a no-op otherwise)
    return SyntheticSet(images.detach().cpu().contiguous(), labels.cpu(), meta, extras)


def _plain(cfg) -> dict:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def optimize(
    run: Run,
    method: str,
    cfg,
    iterations: int,
    step,
    params: dict[str, torch.Tensor],
    optimizers: dict[str, torch.optim.Optimizer],
    generator: torch.Generator,
) -> list[float]:
    """Call `step(iteration) -> loss` for each iteration, with checkpoints, resume and NaN checks.

    `run.on_iteration`, when set, gets (iteration, loss, seconds of the step) after each iteration;
    every method's step ends with `loss.item()`, so on a GPU the seconds include the device's work.
    A hook with a `watch` method is first given `params` (the live tensors, updated in place).
    `params` are the tensors being learned (restored in place on resume); the checkpoint also
    holds the optimizers' states and the generator's state, so a resumed run draws the same
    random numbers as an uninterrupted one.
    """
    start, losses = 0, []
    if run.resume and run.checkpoint is not None and run.checkpoint.exists():
        start, losses = _restore(run, method, cfg, params, optimizers, generator)
    bar = _progress_bar(run, method, start, iterations)
    _keep(run, start, params)
    watch = getattr(run.on_iteration, "watch", None)
    if watch is not None:  # a hook that shows the learned tensors (ddcore.live.LiveView) reads them in place
        watch(params)
    for it in bar:
        began = time.perf_counter()
        loss = float(step(it))
        seconds = time.perf_counter() - began
        if not math.isfinite(loss):
            good = (
                f"the last good checkpoint is {run.checkpoint} (iteration {it - it % run.checkpoint_every})"
                if run.checkpoint is not None and it >= run.checkpoint_every
                else "no checkpoint was written"
            )
            raise FloatingPointError(f"{method}: the loss became {loss} at iteration {it}; {good}")
        losses.append(loss)
        _keep(run, it + 1, params)
        if run.on_iteration is not None:
            run.on_iteration(it, loss, seconds)
        if run.progress:
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        if run.checkpoint is not None and ((it + 1) % run.checkpoint_every == 0 or it + 1 == iterations):
            _save(run, method, cfg, it + 1, losses, params, optimizers, generator)
    return losses


def _keep(run: Run, iteration: int, params: dict[str, torch.Tensor]) -> None:
    """Copy the learned tensors when `iteration` (steps taken so far) is one of run.snapshots."""
    if iteration in run.snapshots:
        run.kept[iteration] = {k: v.detach().cpu().clone().contiguous() for k, v in params.items()}


def _progress_bar(run: Run, method: str, start: int, iterations: int):
    if not run.progress:
        return range(start, iterations)
    from tqdm.auto import tqdm  # imported here: tqdm.auto warns at import in kernels without ipywidgets

    return tqdm(range(start, iterations), desc=f"{method} ipc={run.ipc}", initial=start, total=iterations)


def _identity(run: Run, method: str, cfg) -> dict:
    return {
        "method": method,
        "dataset": run.dataset.name,
        "ipc": run.ipc,
        "seed": run.seed,
        "config": repr(_plain(cfg)),
    }


def _save(run, method, cfg, iteration, losses, params, optimizers, generator) -> None:
    save_checkpoint(
        run.checkpoint,
        {
            "identity": _identity(run, method, cfg),
            "iteration": iteration,
            "losses": torch.tensor(losses, dtype=torch.float64),
            "params": {k: v.detach().cpu() for k, v in params.items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "generator": generator.get_state(),
            "kept": {str(n): tensors for n, tensors in run.kept.items()},
        },
    )


def _restore(run, method, cfg, params, optimizers, generator) -> tuple[int, list[float]]:
    state = load_checkpoint(run.checkpoint)
    expected, found = _identity(run, method, cfg), state.get("identity")
    if found != expected:
        diff = {
            k: (found.get(k) if isinstance(found, dict) else None, v)
            for k, v in expected.items()
            if not isinstance(found, dict) or found.get(k) != v
        }
        raise ValueError(
            f"checkpoint {run.checkpoint} was made by an incompatible run; differences (checkpoint, this run): {diff}"
        )
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(state["params"][k].to(v.device))
    for k, o in optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    generator.set_state(state["generator"])
    run.kept.update({int(n): tensors for n, tensors in state.get("kept", {}).items()})
    return int(state["iteration"]), state["losses"].tolist()
