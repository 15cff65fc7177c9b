"""Which device to compute on, and how to name it in records (shared by the engine and the metrics)."""

from __future__ import annotations

import os
import platform

import torch

from .errors import ConfigError


def resolve_device(pref: str = "auto", info=None) -> torch.device:
    """``auto`` -> CUDA when visible, else CPU; under data parallelism (``info.enabled``) CUDA means this
    process's local GPU. An explicit CUDA request without a GPU is a user error."""
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={pref!r} but no CUDA GPU is visible; use device='cpu' (or 'auto')")
    if pref == "cuda" and info is not None and info.enabled:
        return torch.device("cuda", info.local_rank)
    try:
        return torch.device(pref)
    except RuntimeError as e:
        raise ConfigError(f"device={pref!r} is not a device name; use auto, cpu or cuda") from e


def describe_device(device: str | torch.device | None = None) -> str:
    """A short description of ``device`` (default: the one this process would compute on)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return f"1x {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    return f"CPU ({os.cpu_count()} cores, {cpu}, {torch.get_num_threads()} threads)"
