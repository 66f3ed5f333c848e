"""Speed options for GPU runs (issue #7): bf16 autocast, channels_last memory format, torch.compile.

Off by default, and off means exactly the code paths without this module: `autocast` is a
nullcontext and `to_memory_format` / `maybe_compile` return their argument, so a default
AccelConfig() changes no number. The options are passed down explicitly (`run.accel`,
`EvalConfig.accel`), never set globally.

Only bf16, no fp16: bf16 keeps fp32's exponent range, so gradients need no loss scaling; fp16
would need a GradScaler around every backward, which the methods' unrolled and double
backward passes (DC, MTT, D3) do not have. Parameters stay fp32 (autocast casts per op), so
gradients with respect to them come out fp32; the methods cast features and logits to fp32
before their losses.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from .checks import check_choice

AMPS = ("off", "bf16")


@dataclass
class AccelConfig:
    amp: str = "off"  # "off" | "bf16": torch.autocast of the forward passes to bfloat16
    channels_last: bool = False  # networks and image batches in channels_last memory format
    compile: bool = False  # torch.compile the networks that are trained (evaluation students)

    def __post_init__(self):
        check_choice("amp", self.amp, AMPS)
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def is_default(self) -> bool:
        return self == AccelConfig()


def check_accel(name: str, accel) -> AccelConfig:
    """`accel`, or AccelConfig() for None; a TypeError for anything else (e.g. the string 'bf16')."""
    if accel is None:
        return AccelConfig()
    if not isinstance(accel, AccelConfig):
        raise TypeError(
            f"{name} must be a ddcore.accel.AccelConfig (e.g. AccelConfig(amp='bf16')) "
            f"or None, got {accel!r} ({type(accel).__name__})"
        )
    return accel


def amp_enabled(accel: AccelConfig | None) -> bool:
    return accel is not None and accel.amp != "off"


def autocast(device: torch.device | str, accel: AccelConfig | None):
    """A bf16 torch.autocast region on `device`'s type when accel.amp == 'bf16', else a no-op.

    The cache of bf16 weight copies is off: autocast keeps it until the outermost region ends,
    and our regions may span optimizer steps (evaluation's whole train_network loop, DC's inner
    loop), where cached copies would make every later forward use the first step's weights
    (measured: students then stay near chance). One forward uses each weight once, so the cache
    saved nothing here anyway.
    """
    if not amp_enabled(accel):
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, cache_enabled=False)


def to_memory_format(x, accel: AccelConfig | None):
    """A module or 4-D tensor in channels_last when accel.channels_last, else `x` itself.

    Modules are converted in place (Module.to); tensors of other ranks are returned unchanged.
    """
    if accel is None or not accel.channels_last:
        return x
    if isinstance(x, nn.Module):
        return x.to(memory_format=torch.channels_last)
    if torch.is_tensor(x) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def maybe_compile(net: nn.Module, accel: AccelConfig | None) -> nn.Module:
    """torch.compile(net) when accel.compile, else `net`; the compiled module shares net's parameters."""
    if accel is None or not accel.compile:
        return net
    return torch.compile(net)
