"""Checkpoints: complete, atomic, and loaded without executing code.

* :func:`save_checkpoint` writes to a temporary file in the same folder, fsyncs, then ``os.replace`` s it
  over the old one, so a kill at any moment leaves either the previous or the new checkpoint, never half.
* :func:`load_checkpoint` uses ``torch.load(weights_only=True)``; the only non-tensor class allowed is the
  ``argparse.Namespace`` that official MAE checkpoints pickle as ``args``.
* :func:`load_mae_weights` loads our MAE/i-MAE checkpoints or an official facebookresearch/mae one into an
  MAE strictly, with errors naming the missing, unexpected or mis-shaped keys.
* :func:`load_teacher` / :func:`teacher_fingerprint`: the frozen MAE a run starts from or distils from, and
  what identifies it in the run's fingerprint; :func:`rng_state` / :func:`restore_rng`: the generators a
  checkpoint carries so that a resumed run continues as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import errno
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .config import ARCH_FIELDS, RunConfig
from .errors import CheckpointError, StorageError, os_reason, storage_error
from .models import MaskedAutoencoderViT, freeze_teacher, mae_from_config

FORMAT = "imae-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoint.pt``."""
    p = Path(path)
    return p / CHECKPOINT_NAME if p.is_dir() else p


def save_checkpoint(state: dict, path: str | os.PathLike, *, intact: str | None = None) -> Path:
    """Write ``state`` to ``path`` atomically (see the module docstring).

    A failure of the machine (disk full, read-only, no permission; torch reports a full disk as a
    ``RuntimeError`` of its zip writer) is a one-line :class:`~imae.errors.StorageError` that says the previous
    checkpoint is untouched (``intact``: the caller's words for it, e.g. its step).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        error = _write_failure(e, tmp, path, intact)
        if error is None:
            raise
        raise error from e
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def _write_failure(e: BaseException, tmp: Path, path: Path, intact: str | None) -> StorageError | None:
    """The StorageError for a failed checkpoint write, or None when ``e`` is not the machine's (a bug)."""
    if isinstance(e, RuntimeError):  # torch's zip writer: "[enforce fail at inline_container.cc] unexpected pos"
        text = str(e)
        if not any(k in text for k in ("inline_container", "PytorchStreamWriter", "unexpected pos", "file write")):
            return None
        probe = tmp.parent if tmp.parent.exists() else path.parent
        try:
            full = shutil.disk_usage(probe).free < 2**20  # measured while the partial temporary still lies there
        except OSError:
            full = False
        e = OSError(errno.ENOSPC if full else errno.EIO, "write failed", str(tmp))
        if not full:
            safe = intact or (f"the previous checkpoint {path} is unchanged" if path.exists() else None)
            return StorageError(f"writing the checkpoint {path} failed (torch: {_sentence(text)}); "
                                f"{safe or 'no checkpoint was written before'}. Fix: check the disk, then run "
                                f"the same command again", errno=errno.EIO, path=str(path))
    if os_reason(e) is None:
        return None
    safe = intact or (f"the previous checkpoint {path} is unchanged" if path.exists() else
                      "no checkpoint was written before")
    return storage_error(e, doing="writing the checkpoint", path=path, intact=safe)


def _sentence(text: str, limit: int = 200) -> str:
    """The first sentence of an error message (its first line up to the first full stop), whole; a longer one
    ends at a word with an ellipsis, never in the middle of a word."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    head = re.split(r"\.\s+(?=[A-Z])", first)[0].rstrip(".")
    if len(head) <= limit:
        return head
    return head[:limit].rsplit(" ", 1)[0] + " ..."


_ZIP_MAGIC, _LEGACY_TORCH = b"PK\x03\x04", b"\x80\x02\x8a"  # torch.save's zip format; its pre-1.6 format


def _sniff(p: Path) -> str:
    """What a file looks like from its first bytes: zip (torch.save), legacy (old torch.save), pickle (a plain
    pickle.dump), empty, or other."""
    with open(p, "rb") as f:
        head = f.read(8)
    if not head:
        return "empty"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_LEGACY_TORCH):
        return "legacy"
    if head[:1] == b"\x80":
        return "pickle"
    return "other"


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint file (or ``<run dir>/checkpoint.pt``) safely; clear errors for every failure."""
    p = checkpoint_path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {p}. Fix: pass the checkpoint file or the run directory that "
                              f"holds {CHECKPOINT_NAME} (train one with `python -m imae pretrain`)")
    try:
        kind = _sniff(p)
    except OSError as e:
        raise storage_error(e, doing="reading the checkpoint", path=p) if os_reason(e) else CheckpointError(
            f"{p} cannot be read ({type(e).__name__}: {_sentence(str(e))})") from e
    if kind == "empty":
        raise CheckpointError(f"{p} is empty (0 bytes): a write that never happened or a copy that failed. "
                              f"Fix: delete it and retrain, or restore an intact copy")
    if kind == "pickle":
        raise CheckpointError(
            f"{p} is a plain Python pickle (written by pickle.dump), not a torch.save checkpoint; imae loads "
            f"checkpoints with torch.load(weights_only=True), which never runs code from a file. Fix: in the "
            f"environment that wrote it, load it and re-save it with torch.save(obj, path) (tensors and plain "
            f"values only)")
    if kind == "other":
        raise CheckpointError(f"{p} is truncated or corrupted: it is in neither of torch.save's formats (zip, or "
                              f"the older pickle). Fix: delete it and retrain, or restore an intact copy (or pass "
                              f"the right file: a checkpoint, or the run directory that holds {CHECKPOINT_NAME})")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        globals_ = [ln for ln in lines if "GLOBAL" in ln or "Unsupported global" in ln]
        if globals_:  # a class or function reference: loading it could run code
            raise CheckpointError(
                f"{p} contains Python objects other than tensors and plain values ({_sentence(globals_[0])}); imae "
                f"never executes code from a checkpoint. Fix: re-save only its state_dict, or use a trusted copy"
            ) from e
        detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[-1] if lines else "")
        raise CheckpointError(f"{p} is truncated or corrupted (unreadable pickle: {_sentence(detail)}). "
                              f"Fix: delete it and retrain, or restore an intact copy") from e
    except OSError as e:
        if os_reason(e):
            raise storage_error(e, doing="reading the checkpoint", path=p) from e
        raise CheckpointError(f"{p} cannot be read ({type(e).__name__}: {_sentence(str(e))}). "
                              f"Fix: delete it and retrain, or restore an intact copy") from e
    except Exception as e:  # torch.load on a damaged file raises many types (RuntimeError, EOFError, KeyError, ...)
        raise CheckpointError(
            f"{p} is truncated or corrupted ({type(e).__name__}{': ' + _sentence(str(e)) if str(e) else ''}). "
            f"Fix: delete it and retrain, or restore an intact copy") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def is_imae_checkpoint(ckpt: dict) -> bool:
    return ckpt.get("format") == FORMAT


def mae_state_dict(ckpt: dict) -> dict:
    """The MAE part of any supported checkpoint: ours (MAE or i-MAE student) or an official one."""
    if is_imae_checkpoint(ckpt):
        sd = ckpt["model"]
        if ckpt["config"]["train"]["method"] == "imae":
            sd = {k[len("mae."):]: v for k, v in sd.items() if k.startswith("mae.")}
        return sd
    if "model" in ckpt and isinstance(ckpt["model"], dict):
        return ckpt["model"]  # facebookresearch/mae: {'model': ..., 'optimizer': ..., 'args': Namespace}
    if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt  # a bare state_dict
    raise CheckpointError(f"unrecognised checkpoint layout (top-level keys {sorted(ckpt)[:10]})")


def load_mae_weights(model: torch.nn.Module, state: dict, *, source: str = "checkpoint",
                     allow_missing: tuple[str, ...] = ()) -> None:
    """Load an MAE state_dict strictly, naming what does not fit.

    Args:
        model: a :class:`~imae.models.MaskedAutoencoderViT`.
        state: its state_dict (see :func:`mae_state_dict`).
        source: a path or description for the error message.
        allow_missing: key prefixes that may be absent (e.g. ``("decoder", "mask_token")`` for encoder-only
            checkpoints such as ``mae_pretrain_vit_base.pth``); everything else must be present.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    hard_missing = [k for k in missing if not k.startswith(allow_missing)]
    if hard_missing:
        hint = ""
        if all(k.startswith(("decoder", "mask_token")) for k in hard_missing):
            hint = (" It looks like an encoder-only checkpoint (such as mae_pretrain_vit_base.pth); "
                    "MAE/i-MAE training needs the decoder too: use the *_full.pth checkpoint.")
        raise CheckpointError(f"{source} is missing {len(hard_missing)} key(s) the model needs: "
                              f"{_short(hard_missing)}.{hint}")
    if unexpected:
        raise CheckpointError(f"{source} has {len(unexpected)} key(s) this MAE does not: {_short(unexpected)}. "
                              "Fix: check the checkpoint is an MAE of this layout")
    bad = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
           if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{source} does not match the model's architecture: {_short(bad)}. "
                              "Fix: build the model with the same preset/ModelConfig as the checkpoint")
    result = model.load_state_dict(state, strict=not allow_missing)
    assert all(k.startswith(allow_missing) for k in getattr(result, "missing_keys", []))


def _short(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


# ------------------------------------------------------------------------------------- teacher
def load_teacher(cfg: RunConfig, device, source: str | None = None) -> tuple[MaskedAutoencoderViT, str]:
    """The frozen MAE teacher named by ``cfg.imae.teacher`` (or ``source``: an MAE's ``train.init_from``) and
    its fingerprint; checks the architecture."""
    path = checkpoint_path(source or cfg.imae.teacher)
    ckpt = load_checkpoint(path)
    if is_imae_checkpoint(ckpt):
        tcfg = ckpt["config"]
        if tcfg["train"]["method"] != "mae":
            raise CheckpointError(f"the teacher {path} is an i-MAE checkpoint; the teacher must be a vanilla MAE")
        fields = [k for k in ARCH_FIELDS if tcfg["model"][k] != getattr(cfg.model, k)]
        if fields:
            diff = "; ".join(f"{k}={tcfg['model'][k]} (teacher) vs {getattr(cfg.model, k)} (student)" for k in fields)
            flags = " ".join(f"--set model.{k}={tcfg['model'][k]}" for k in fields)
            presets = (f" (the teacher was trained with preset {tcfg.get('preset')!r}, the student uses "
                       f"{cfg.preset!r})" if tcfg.get("preset") != cfg.preset else "")
            raise CheckpointError(
                f"the teacher {path} does not match the student's architecture: {diff}{presets}. The student is "
                f"built as its teacher. Fix: give the student the teacher's model settings ({flags}; in Python "
                f"the same model.* overrides), or train a teacher with the student's settings")
        if not ckpt.get("finished"):
            epochs = tcfg.get("train", {}).get("epochs")
            raise CheckpointError(
                f"the teacher {path} never finished training (stopped at step {ckpt.get('step')}, epoch "
                f"{ckpt.get('epoch')} of {epochs}); a student of a half-trained teacher is not the run its "
                f"configuration describes. Fix: finish the teacher first (run the command that trained it "
                f"again: it resumes from this checkpoint), then this one")
    teacher = mae_from_config(cfg.model)
    load_mae_weights(teacher, mae_state_dict(ckpt), source=str(path))
    teacher.checkpoint_step = ckpt.get("step")  # recorded with the fingerprint in the student's checkpoint
    return freeze_teacher(teacher).to(device), teacher_fingerprint(ckpt, path)


def teacher_fingerprint(ckpt: dict, path: Path) -> str:
    """What identifies a teacher in its student's fingerprint: its run's fingerprint (and step while
    unfinished: the finished teacher is another teacher), or the name and size of an external file."""
    if is_imae_checkpoint(ckpt):
        return ckpt["fingerprint"] if ckpt.get("finished") else f"{ckpt['fingerprint']}@step{ckpt.get('step')}"
    return f"external:{path.name}:{path.stat().st_size}"


# ------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """Every generator a run draws from (torch, Python, NumPy, CUDA), in a form ``weights_only`` loads."""
    kind, keys, *rest = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": [kind, keys.tolist(), *rest],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(rng: dict | None) -> None:
    """Set the generators from :func:`rng_state` (what is missing, or CUDA on another device count, is left)."""
    rng = rng or {}
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if rng.get("python"):
        random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in rng["python"]))
    if rng.get("numpy"):
        kind, keys, *rest = rng["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
