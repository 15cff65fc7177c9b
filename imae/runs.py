"""Run directories: ``config.yaml`` + ``metrics.jsonl`` + ``checkpoint.pt``.

A directory belongs to one configuration (its fingerprint). Reopening it with the same config resumes or
returns the finished run (this is how notebooks cache training); with a different config it is refused
unless ``overwrite=True``, so finished work is never silently replaced. The notebooks' cached runs live
under :func:`runs_root`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import yaml

from .checkpoint import CHECKPOINT_NAME
from .config import RunConfig
from .errors import RunDirError

CONFIG_NAME, METRICS_NAME = "config.yaml", "metrics.jsonl"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def runs_root(runs_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds the cached runs: ``runs_dir``, else ``$IMAE_RUNS``, else ``./runs``."""
    return Path(runs_dir or os.environ.get("IMAE_RUNS", "runs"))


def read_run_config(run_dir: str | os.PathLike) -> dict:
    p = Path(run_dir) / CONFIG_NAME
    with open(p) as f:
        return yaml.safe_load(f) or {}


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: readers (and a
    process killed midway) see the old or the new content, never half (stale temporaries: ``.*.tmp``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def atomic_write_npz(path: str | os.PathLike, arrays: dict) -> Path:
    """``np.savez_compressed`` to a temporary name beside ``path``, then a rename over it (as
    :func:`atomic_write_text`: never half a file, and no stale temporary on an error)."""
    import numpy as np

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_yaml(path: Path, data: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """``data`` as indented JSON at ``path`` (parent folders created, written atomically); numpy scalars are
    written as floats."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(data, indent=1, default=float))


def open_run_dir(out: str | os.PathLike, cfg: RunConfig, fingerprint: str, *, derived: dict,
                 overwrite: bool = False, write: bool = True) -> Path:
    """Create or reopen a run directory for ``cfg``; refuse one that holds a different run.

    Returns the directory. Raises RunDirError when it holds another config's results (``overwrite=True``
    deletes them first).
    """
    out = Path(out)
    cfg_file = out / CONFIG_NAME
    if cfg_file.is_file():
        old = read_run_config(out)
        if old.get("fingerprint") != fingerprint:
            if not overwrite:
                new_flat, old_flat = _flatten(cfg.to_dict()), _flatten(old.get("config", {}))
                diff = [f"{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}"
                        for k in sorted(set(new_flat) | set(old_flat)) if new_flat.get(k) != old_flat.get(k)]
                detail = "; ".join(diff[:6]) if diff else "the teacher differs"
                raise RunDirError(
                    f"{out} holds results of a different configuration (fingerprint {old.get('fingerprint')}, "
                    f"now {fingerprint}; {detail}). Refusing to overwrite them. Fix: choose another output "
                    f"folder, or pass --overwrite (overwrite=True) to delete and replace them")
            if write:
                for name in (CONFIG_NAME, METRICS_NAME, CHECKPOINT_NAME):
                    if (out / name).exists():
                        (out / name).unlink()
    elif out.exists() and any(out.iterdir()) and not overwrite and (out / CHECKPOINT_NAME).exists():
        raise RunDirError(f"{out} holds a checkpoint but no {CONFIG_NAME}; refusing to reuse it. "
                          "Fix: choose another output folder or pass --overwrite")
    if write:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp"):  # left by a process killed while writing; the real file is intact
            stale.unlink(missing_ok=True)
        if not cfg_file.is_file():
            write_yaml(cfg_file, {"fingerprint": fingerprint, "derived": derived, "config": cfg.to_dict()})
    return out


class MetricsLog:
    """Append-only JSONL of training metrics, truncated back to a checkpoint's step on resume."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / METRICS_NAME
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (written after the checkpoint we resume from)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in read_metrics(self.path) if line.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def reset(self) -> None:
        if self.enabled and self.path.exists():
            self.path.unlink()

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a ``metrics.jsonl`` (or of the one inside a run directory); a torn last line is skipped."""
    p = Path(path)
    p = p / METRICS_NAME if p.is_dir() else p
    out = []
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill; its step is re-run on resume
    return out


def remove_run_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the training loop checks at step boundaries, so that a stopped run
    writes its checkpoint first (a second signal interrupts at once)."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
