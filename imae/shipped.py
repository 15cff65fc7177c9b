"""The CPU edition's trained runs, shipped with the repository, so a fresh clone reruns any chapter without
training.

``weights/<preset>/<run>.safetensors`` holds a run's model (float16, with its decoder and splitter, for the
reconstructions), ``<run>.json`` its card (configuration, fingerprint, checksum, training record; no machine
paths) and ``<run>.metrics.jsonl.gz`` its training log (the pretraining chapter's curves). ``<run>`` is the run
directory's name, ``<preset>-<method>-<fingerprint>``, so :func:`imae.companion.experiments.cached_run` finds the
shipped copy of exactly the configuration it asks for: where that run is not in the cache yet, it is restored
from the shipped files (seconds) instead of trained (minutes to an hour). The book's CPU edition is computed
from these float16 weights, so a rerun from a fresh clone reproduces its numbers.

``IMAE_RETRAIN=1`` (``make figure ... RETRAIN=1``) ignores the shipped runs and trains from scratch.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

RETRAIN_ENV = "IMAE_RETRAIN"


def weights_root() -> Path:
    """``weights/`` at the repository root (where the shipped runs lie)."""
    return Path(__file__).resolve().parents[1] / "weights"


def retrain() -> bool:
    """Whether the shipped runs are to be ignored (``IMAE_RETRAIN`` set to anything but 0/empty)."""
    return os.environ.get(RETRAIN_ENV, "").strip() not in ("", "0", "false", "no")


def card_for(run_name: str, *, root: str | os.PathLike | None = None) -> Path | None:
    """The shipped card of run directory ``run_name`` (``<preset>-<method>-<fingerprint>``), or None."""
    preset = run_name.split("-", 1)[0]
    card = Path(root or weights_root()) / preset / f"{run_name}.json"
    return card if card.is_file() else None


def ship(run_dir: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Path:
    """Store the finished run ``run_dir`` under ``weights/<preset>/``; returns the card's path."""
    from .checkpoint import CHECKPOINT_NAME, load_checkpoint
    from .config import RunConfig
    from .errors import ImaeError
    from .pretrained import _atomic_json, portable_card, read_card, save_weights

    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    if not ckpt.get("finished"):
        raise ImaeError(f"{run_dir} is not finished: train it to the end before shipping it")
    cfg = RunConfig.from_dict(ckpt["config"])
    folder = Path(root or weights_root()) / cfg.preset
    teacher = ckpt.get("teacher") or {}
    extra = {"run": run_dir.name,
             "trained": {"epochs": ckpt.get("epoch"), "steps": ckpt.get("step"),
                         "train_s": round(float(ckpt.get("elapsed_s", 0.0)), 1), "device": ckpt.get("hardware")},
             "teacher_record": {k: teacher.get(k) for k in ("fingerprint", "step")} if teacher else None}
    if cfg.imae.teacher and cfg.method == "imae":
        extra["teacher"] = Path(str(cfg.imae.teacher)).name
    if cfg.train.init_from:
        extra["init_from"] = Path(str(cfg.train.init_from)).name
    save_weights(ckpt["model"], cfg, folder, run_dir.name, fingerprint=ckpt["fingerprint"], extra=extra)
    card = folder / f"{run_dir.name}.json"
    _atomic_json(card, portable_card(read_card(card)))
    log = run_dir / "metrics.jsonl"
    if log.is_file():
        with open(log, "rb") as src, gzip.GzipFile(folder / f"{run_dir.name}.metrics.jsonl.gz", "wb", mtime=0) as dst:
            shutil.copyfileobj(src, dst)
    return card


def restore(card: str | os.PathLike, run_dir: str | os.PathLike, cfg) -> Path:
    """A finished run directory for ``cfg`` from its shipped card (weights, configuration and training log):
    what :func:`imae.train.pretrain` then returns at once, and the metrics read like a trained run."""
    from .pretrained import materialize_run

    card = Path(card)
    run_dir = Path(run_dir)
    # the requesting configuration's own paths and operational fields (they do not enter the fingerprint)
    over = {"data.root": cfg.data.root, "train.device": cfg.train.device}
    if cfg.method == "imae":
        over["imae.teacher"] = str(cfg.imae.teacher)
    if cfg.train.init_from:
        over["train.init_from"] = str(cfg.train.init_from)
    run_dir.mkdir(parents=True, exist_ok=True)
    materialize_run(card, run_dir, **over)
    log = card.with_name(card.name[:-len(".json")] + ".metrics.jsonl.gz")
    if log.is_file() and not (run_dir / "metrics.jsonl").is_file():
        with gzip.open(log, "rb") as src, open(run_dir / "metrics.jsonl", "wb") as dst:
            shutil.copyfileobj(src, dst)
    return run_dir
