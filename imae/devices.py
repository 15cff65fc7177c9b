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


class CompiledOrEager:
    """``torch.compile(fn)``, or ``fn`` itself when compiling fails on the first call.

    Inductor needs a working C++ compiler on the CPU (and Triton on a GPU); a machine without one should
    train, slower, rather than stop. Only the FIRST call may fall back (a warning names the cause): an error
    after a compiled call succeeded is the model's own and is raised.
    """

    def __init__(self, fn, **compile_kwargs):
        self.eager = fn
        self.compiled = torch.compile(fn, **compile_kwargs)
        self.fallback_reason: str | None = None
        self._first = True

    def __call__(self, *args, **kwargs):
        if not self._first:
            return (self.eager if self.fallback_reason else self.compiled)(*args, **kwargs)
        self._first = False
        try:
            return self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compiler failure; the eager call below re-raises real errors
            import warnings

            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()][:2]
            self.fallback_reason = f"{type(e).__name__}: {' '.join(lines)}"[:300]
            warnings.warn(f"torch.compile failed on the first step ({self.fallback_reason}); training continues "
                          f"without it (train.compile=false avoids the attempt)", RuntimeWarning, stacklevel=2)
            return self.eager(*args, **kwargs)
