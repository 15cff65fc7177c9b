"""The CPU edition's trained runs, shipped with the repository, so a fresh clone reruns any chapter without
training.

``weights/<preset>/<run>.safetensors`` holds a run's model (float16, with its decoder and splitter, for the
reconstructions), ``<run>.json`` its card (configuration, fingerprint, checksum, training record; no machine
paths) and ``<run>.metrics.jsonl.gz`` its training log (the pretraining chapter's curves). ``<run>`` is the run
directory's name, ``<preset>-<method>-<fingerprint>``, so :func:`imae.companion.experiments.cached_run` finds the
shipped copy of exactly the configuration it asks for: where that run is not in the cache yet, it is restored
from the shipped files (seconds) instead of trained (minutes to an hour). The book's CPU edition is computed
from these float16 weights, so a rerun from a fresh clone reproduces its numbers.

Fine-tunes are evaluations that train (about two minutes each on 2 cores, twelve in the classification chapter),
so their classifiers ship too: ``weights/<preset>/finetune/<run>-<key>.safetensors`` (float16: the encoder
without its decoder, and the head) with ``<run>-<key>.json`` (recipe, curve, starting probe, where it trained;
:func:`imae.metrics.finetune.finetune_record`). ``<key>`` hashes the run's name with the evaluation's resolved
options (recipe, seed, test-image cap; not the device or the data root). :func:`finetune_for` finds the one a
notebook asks for, and the fine-tune then scores those weights on the test images instead of training
(``restore_from``); :func:`ship_finetunes` stores every fine-tune of a runs folder.

``IMAE_RETRAIN=1`` (``make figure ... RETRAIN=1``) ignores the shipped runs and fine-tunes and trains from scratch.
"""

from __future__ import annotations

import gzip
import hashlib
import json
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


FINETUNE = "finetune"


def finetune_key(run_name: str, options: dict) -> str:
    """The shipped fine-tune's key: the run and the evaluation's resolved options (what the fine-tune's function
    gets, with the test-image cap and dataset), without the device, the data root or ``restore_from``."""
    from .metrics.evaluate import resolved_options

    kwargs, data = resolved_options(FINETUNE, options)
    kwargs.pop("restore_from", None)
    blob = {"run": run_name, **kwargs, "dataset": data.get("dataset"), "max_images": data.get("max_images")}
    text = json.dumps(blob, sort_keys=True, default=str)  # tuples serialise as lists, as in config.yaml
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def finetune_for(run_name: str, options: dict, *, root: str | os.PathLike | None = None) -> Path | None:
    """The shipped classifier of the fine-tune of run ``run_name`` with ``options``, or None."""
    preset = run_name.split("-", 1)[0]
    path = Path(root or weights_root()) / preset / FINETUNE / f"{run_name}-{finetune_key(run_name, options)}.safetensors"
    return path if path.is_file() else None


def ship_finetune(eval_dir: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Path:
    """Store the fine-tune evaluated in ``eval_dir`` (``<run>/eval/finetune-<hash>/``: ``finetune.json``, its
    classifier and ``config.yaml``) under ``weights/<preset>/finetune/``; returns the classifier's path."""
    import torch
    import yaml
    from safetensors.torch import load_file, save_file

    from .errors import ImaeError
    from .metrics.finetune import CLASSIFIER_FILE, finetune_record
    from .runs import atomic_write_text

    eval_dir = Path(eval_dir)
    weights, result_file = eval_dir / CLASSIFIER_FILE, eval_dir / f"{FINETUNE}.json"
    if not weights.is_file() or not result_file.is_file():
        raise ImaeError(f"{eval_dir} holds no trained fine-tune ({CLASSIFIER_FILE} and {FINETUNE}.json). Fix: run "
                        f"the fine-tune there first; a restored fine-tune is shipped already")
    run_name = eval_dir.parent.parent.name
    saved = yaml.safe_load((eval_dir / "config.yaml").read_text())["evaluations"][FINETUNE]
    options = {**saved["options"], **{k: saved.get(k) for k in ("dataset", "max_images")}}
    folder = Path(root or weights_root()) / run_name.split("-", 1)[0] / FINETUNE
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{run_name}-{finetune_key(run_name, options)}"
    target = folder / f"{name}.safetensors"
    save_file({k: v.to(torch.float16) for k, v in load_file(str(weights)).items()}, str(target))
    os.chmod(target, 0o644)  # readable like the repository's other files (safetensors writes it owner-only)
    record = {"run": run_name, **finetune_record(json.loads(result_file.read_text()))}
    atomic_write_text(folder / f"{name}.json", json.dumps(record, indent=1) + "\n")
    return target


def ship_finetunes(runs_dir: str | os.PathLike, preset: str, *, root: str | os.PathLike | None = None) -> list[Path]:
    """Ship every trained fine-tune of the ``preset`` runs in ``runs_dir`` (:func:`ship_finetune`)."""
    from .metrics.finetune import CLASSIFIER_FILE

    return [ship_finetune(f.parent, root=root)
            for f in sorted(Path(runs_dir).glob(f"{preset}-*/eval/{FINETUNE}-*/{CLASSIFIER_FILE}"))]
