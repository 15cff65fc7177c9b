"""Stored trained weights: fp16 safetensors + a JSON card, sha256-checksummed, loadable by name.

    import imae
    mae = imae.load_pretrained("cifar-mae")     # MaskedAutoencoderViT, eval mode
    student = imae.load_pretrained("cifar-imae")  # IMAE (student MAE + splitter heads), eval mode

A stored model is two files in ``<root>/<preset>/weights/`` (``<root>`` is the repository's ``campaign/``
folder, or ``$IMAE_WEIGHTS``):

* ``<name>.safetensors``: the full state dict (encoder, decoder and, for an i-MAE, the splitter heads) in
  float16, without optimizer state (a ViT-Tiny/2 MAE is 12.5 MB);
* ``<name>.json``: the card: format, kind (``mae`` / ``imae``), the run's config and fingerprint, the
  weights file's sha256 and size, and how it was trained (epochs, wall time, device).

:func:`load_pretrained` verifies the checksum before it builds the model; a missing or corrupt file is an
:class:`~imae.errors.ImaeError` naming the file and the fix. :func:`materialize_run` turns a card back into a
finished run directory, so the engine (as an i-MAE's teacher) and :func:`imae.metrics.evaluate` use stored
weights exactly as they use a run they trained.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import torch

from .errors import ImaeError
from .paths import repo_root

WEIGHTS_FORMAT = "imae-weights-v1"
STORE_DTYPE = torch.float16


class WeightsError(ImaeError):
    """Stored weights are missing, corrupt, too large, or do not fit their card."""


def weights_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$IMAE_WEIGHTS``, else the repository's ``campaign/`` folder."""
    return Path(root or os.environ.get("IMAE_WEIGHTS") or repo_root() / "campaign")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------- save
def save_weights(model: torch.nn.Module | dict, config, folder: str | os.PathLike, name: str, *, fingerprint: str,
                 extra: dict | None = None, max_bytes: int | None = None) -> dict:
    """Write ``folder/<name>.safetensors`` (float16) and ``folder/<name>.json``; returns the card.

    Args:
        model: a :class:`~imae.models.MaskedAutoencoderViT` or :class:`~imae.models.IMAE`, or its state dict
            (e.g. a checkpoint's ``model``).
        config: its :class:`~imae.config.RunConfig` (stored in the card; the model is rebuilt from it).
        folder: where both files go.
        name: e.g. ``cifar-mae``.
        fingerprint: the run's fingerprint (what the engine and the metrics identify it by).
        extra: more card fields (training record, teacher, ...).
        max_bytes: refuse (and delete) a weights file larger than this (None: no limit).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in (model if isinstance(model, dict) else model.state_dict()).items():
        v = v.detach().to("cpu")
        if v.is_floating_point():
            v = v.to(STORE_DTYPE)
            if not torch.isfinite(v).all():
                raise WeightsError(f"{name}: tensor {k} does not fit {STORE_DTYPE} (non-finite after the cast); "
                                   "refusing to store it")
        state[k] = v.contiguous()
    path = folder / f"{name}.safetensors"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata={"format": WEIGHTS_FORMAT, "name": name, "fingerprint": fingerprint})
    os.replace(tmp, path)
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        path.unlink()
        raise WeightsError(f"{name}: {size / 1e6:.1f} MB of weights is over the {max_bytes / 1e6:.1f} MB limit "
                           "per stored model")
    kind = "imae" if config.method == "imae" else "mae"
    card = {"format": WEIGHTS_FORMAT, "name": name, "kind": kind, "file": path.name, "dtype": str(STORE_DTYPE)[6:],
            "sha256": sha256_file(path), "bytes": size, "n_params": int(sum(v.numel() for v in state.values())),
            "fingerprint": fingerprint, "config": config.to_dict(), "torch": torch.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(extra or {})}
    _atomic_json(folder / f"{name}.json", card)
    return card


# ------------------------------------------------------------------------------------------------- load
def known_names(root: str | os.PathLike | None = None) -> list[str]:
    return sorted(p.stem for p in weights_root(root).glob("*/weights/*.json"))


def find_card(name: str, root: str | os.PathLike | None = None) -> Path:
    """The card of ``name``: ``name`` itself if it is a path to a ``.json``, else ``<root>/*/weights/<name>.json``."""
    p = Path(name)
    if p.suffix == ".json" and p.is_file():
        return p
    base = weights_root(root)
    hits = sorted(base.glob(f"*/weights/{name}.json"))
    if not hits:
        preset = name.split("-")[0]
        known = known_names(root)
        raise WeightsError(
            f"no stored weights named {name!r}: expected {base / preset / 'weights' / (name + '.json')} and "
            f"{name}.safetensors beside it (stored: {known or 'none'}). Fix: they come from the GPU campaign "
            f"(`python -m imae campaign`, then `python -m imae campaign --collect FOLDER`; see campaign/README.md), "
            f"or pass root=FOLDER (or set $IMAE_WEIGHTS) where they lie")
    if len(hits) > 1:
        raise WeightsError(f"{name!r} is stored more than once ({[str(h) for h in hits]}); pass the .json path")
    return hits[0]


def read_card(card_path: str | os.PathLike) -> dict:
    card_path = Path(card_path)
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"{card_path} is not a readable weights card ({type(e).__name__}: {e}). Fix: restore "
                           f"it (git checkout -- {card_path}) or collect the campaign results again") from e
    if card.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(f"{card_path} is not an imae weights card (format {card.get('format')!r}, "
                           f"expected {WEIGHTS_FORMAT!r})")
    return card


def verify(card_path: str | os.PathLike) -> tuple[dict, Path]:
    """Check that the card's weights file exists and has the card's sha256; returns (card, weights path)."""
    card_path = Path(card_path)
    card = read_card(card_path)
    path = card_path.with_name(card["file"])
    if not path.is_file():
        raise WeightsError(f"{path} is missing (its card {card_path} is there). Fix: restore it "
                           f"(git checkout -- {path}, or `git lfs pull` if it is stored with LFS) or collect the "
                           "campaign results again (campaign/README.md)")
    digest = sha256_file(path)
    if digest != card["sha256"]:
        raise WeightsError(f"{path} is corrupt or was changed: its sha256 is {digest[:16]}..., the card says "
                           f"{card['sha256'][:16]}... ({path.stat().st_size} bytes, card {card['bytes']}). Fix: "
                           f"restore it (git checkout -- {path}) or collect the campaign results again")
    return card, path


def state_dict_from(card_path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> tuple[dict, dict]:
    """(card, state dict in ``dtype``) of a verified stored model."""
    from safetensors.torch import load_file

    card, path = verify(card_path)
    state = load_file(str(path))
    return card, {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def model_from_card(card: dict) -> torch.nn.Module:
    """An untrained model of the card's architecture (MAE, or i-MAE around an MAE)."""
    from .config import RunConfig
    from .models import imae_from_config, mae_from_config

    cfg = RunConfig.from_dict(card["config"])
    mae = mae_from_config(cfg.model)
    return imae_from_config(cfg, mae) if card["kind"] == "imae" else mae


def load_pretrained(name: str, *, root: str | os.PathLike | None = None, device: str | torch.device = "cpu"
                    ) -> torch.nn.Module:
    """A stored model, checksum-verified, in eval mode.

    Args:
        name: ``<preset>-mae`` or ``<preset>-imae`` (e.g. ``cifar-imae``), or the path of a card ``.json``.
        root: where ``<preset>/weights/`` lie (default ``$IMAE_WEIGHTS`` or the repository's ``campaign/``).
        device: where to put the model.
    Returns:
        a :class:`~imae.models.MaskedAutoencoderViT` (``kind`` mae) or :class:`~imae.models.IMAE` (``kind``
        imae) with the stored weights in float32, ``.eval()``; ``model.card`` holds the card.
    """
    card, state = state_dict_from(find_card(name, root))
    model = model_from_card(card)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(f"{name}: the stored weights do not fit a {card['kind']} of the card's config "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.load_state_dict(state, strict=True)
    model.card = card
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ portability
# Config fields that hold where something lay on the training machine: what a published card must not carry
# (they are operational or identified otherwise: the data root is not part of the fingerprint, the teacher
# counts by its fingerprint, recorded beside it). Whoever rebuilds a run from a card passes its own
# (materialize_run's config_overrides).
MACHINE_FIELDS = ("data.root", "imae.teacher", "train.init_from")


def portable_card(card: dict) -> dict:
    """A copy of ``card`` without the training machine's paths: ``data.root`` becomes None (the reader's
    default data root), ``imae.teacher`` and ``train.init_from`` the name of the model they name (the card's
    ``teacher`` / ``init_from`` when recorded, else the path's last part). Nothing else changes: not the
    fingerprint, not the checksum of the weights."""
    out = json.loads(json.dumps(card))
    cfg = out.get("config") or {}
    if cfg.get("data", {}).get("root") is not None:
        cfg["data"]["root"] = None
    for key, named in (("imae.teacher", "teacher"), ("train.init_from", "init_from")):
        sec, field = key.split(".")
        value = cfg.get(sec, {}).get(field)
        if value:
            cfg[sec][field] = out.get(named) or Path(str(value).replace("\\", "/")).name
    return out


def make_portable(card_path: str | os.PathLike) -> bool:
    """Rewrite a stored card as :func:`portable_card`; True when it changed. The weights file is not
    touched (its sha256, recorded in the card, stays right)."""
    card_path = Path(card_path)
    card = read_card(card_path)
    new = portable_card(card)
    if new == card:
        return False
    _atomic_json(card_path, new)
    return True


# ------------------------------------------------------------------------------------------ run folders
def materialize_run(card_path: str | os.PathLike, run_dir: str | os.PathLike, **config_overrides) -> Path:
    """A finished run directory (``config.yaml`` + ``checkpoint.pt``) holding a stored model, for the engine
    and the metrics; reused when it already holds this model.

    Args:
        card_path: the card (``<name>.json``).
        run_dir: where to write it.
        **config_overrides: dotted config fields to set (where the data lies, ``imae.teacher``); they do not
            change the fingerprint, which is the card's.
    """
    from .checkpoint import CHECKPOINT_NAME, FORMAT, load_checkpoint, save_checkpoint
    from .config import RunConfig, derived
    from .runs import open_run_dir

    run_dir = Path(run_dir)
    card, state = state_dict_from(card_path)
    d = json.loads(json.dumps(card["config"]))
    for key, value in config_overrides.items():
        sec, field = key.split(".", 1)
        d[sec][field] = value
    cfg = RunConfig.from_dict(d)
    fp = card["fingerprint"]
    ckpt_file = run_dir / CHECKPOINT_NAME
    if ckpt_file.is_file():
        old = load_checkpoint(ckpt_file)
        if old.get("finished") and old.get("fingerprint") == fp and old.get("weights_sha256") == card["sha256"] \
                and old.get("config") == cfg.to_dict():
            return run_dir
    open_run_dir(run_dir, cfg, fp, derived=derived(cfg), overwrite=True)
    model = model_from_card(card)
    model.load_state_dict(state, strict=True)  # checks the fit before anything reads the folder
    epochs = (card.get("trained") or {}).get("epochs", cfg.train.epochs)
    save_checkpoint({"format": FORMAT, "config": cfg.to_dict(), "fingerprint": fp, "finished": True,
                     "model": model.state_dict(), "step": (card.get("trained") or {}).get("steps", 0),
                     "epoch": epochs, "batch": 0, "elapsed_s": float((card.get("trained") or {}).get("train_s", 0.0)),
                     "teacher": ({"path": str(cfg.imae.teacher), **(card.get("teacher_record") or {})}
                                 if card["kind"] == "imae" else None),
                     "hardware": (card.get("trained") or {}).get("device", "unknown"),
                     "weights_sha256": card["sha256"], "stored_weights": str(Path(card_path).resolve())}, ckpt_file)
    return run_dir


__all__ = ["WEIGHTS_FORMAT", "WeightsError", "save_weights", "load_pretrained", "find_card",
           "read_card", "verify", "state_dict_from", "model_from_card", "materialize_run", "sha256_file",
           "weights_root", "known_names", "portable_card", "make_portable", "MACHINE_FIELDS"]
