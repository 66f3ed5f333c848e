"""Devices and seeds: the two things every run needs and nothing else should decide."""

from __future__ import annotations

import ctypes
import os
import random
import sys

import numpy as np
import torch


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn None/'auto'/'cpu'/'cuda[:k]' into a usable torch.device, or raise."""
    if device is None or device == "auto":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device; use 'auto', 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} is not available on this machine (no CUDA); use 'cpu' or 'auto'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported; use 'auto', 'cpu' or 'cuda'")
    return dev


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch's global RNGs and return a fresh CPU generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc serve large CPU tensors from its heap and keep freed memory for the next one.

    By default glibc maps every allocation over 32 MiB afresh from the kernel and unmaps it on
    free, so each new activation (a 100-image batch at width 128 is 52 MB per layer) page-faults
    and is zeroed again: on this 2-core CPU an evaluation epoch at IPC 10 took 0.254 s with
    glibc's default and 0.217 s with this (bench/ab_cpu_paths.py). Called once when ddcore is
    imported; the process then keeps its peak heap instead of returning it to the system.
    DDCORE_MALLOC=default leaves glibc as it is. Returns whether the setting was applied (glibc on Linux only).
    """
    if os.environ.get("DDCORE_MALLOC", "heap") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
