"""Frozen models for evaluation: our MAE / i-MAE checkpoints, or a bare / official MAE state dict.

:func:`load_model` returns a :class:`LoadedModel`: the frozen MAE (eval mode, no gradients), the i-MAE
wrapper around it when the checkpoint is an i-MAE student, the run's :class:`~imae.config.RunConfig`, and
for an i-MAE the path of its teacher (``config.imae.teacher``).

The *reference encoder* of the separability metric and of the reconstruction baseline is, by default, the
i-MAE's teacher for an i-MAE and the model itself for an MAE, so an MAE and the i-MAE distilled from it are
scored against the same targets. :func:`load_reference` resolves it and VERIFIES it: training records the
teacher's fingerprint and step in the i-MAE's checkpoint (``ckpt["teacher"]``), and the teacher found at
that path must still have that fingerprint (a retrained or continued teacher is another encoder). A caller
comparing several models pins the reference with ``expect_fingerprint``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import (checkpoint_path, is_imae_checkpoint, load_checkpoint, load_mae_weights, mae_state_dict,
                          teacher_fingerprint)
from ..config import ModelConfig, RunConfig
from ..devices import resolve_device  # noqa: F401  (re-exported by imae.metrics)
from ..errors import CheckpointError, ConfigError
from ..models import IMAE, MaskedAutoencoderViT, imae_from_config, mae_from_config


@dataclass
class LoadedModel:
    """A frozen model ready for evaluation.

    Attributes:
        mae: the MAE (for an i-MAE: its encoder/decoder), eval mode, no gradients.
        imae: the i-MAE wrapper (splitter heads) or None for an MAE.
        config: the run's configuration (for an external state dict: a default RunConfig around the given
            ModelConfig).
        kind: ``mae`` or ``imae``.
        path: the checkpoint file.
        fingerprint: the run's fingerprint (``external:NAME:SIZE`` for a foreign checkpoint).
        teacher_path: an i-MAE's teacher (``config.imae.teacher``), else None.
        decoder_loaded: False for an encoder-only checkpoint (features work, reconstruction does not).
        step: the checkpoint's optimizer step (None for a foreign checkpoint).
        as_teacher: what identifies this checkpoint when it is a teacher
            (:func:`imae.checkpoint.teacher_fingerprint`: the run's fingerprint, ``@stepN`` while unfinished).
        teacher_fingerprint, teacher_step: an i-MAE's teacher as its training recorded it (None for
            checkpoints written before training recorded it).
    """

    mae: MaskedAutoencoderViT
    imae: Optional[IMAE]
    config: RunConfig
    kind: str
    path: Path
    fingerprint: str
    teacher_path: Optional[str] = None
    decoder_loaded: bool = True
    step: Optional[int] = None
    as_teacher: Optional[str] = None
    teacher_fingerprint: Optional[str] = None
    teacher_step: Optional[int] = None

    def describe(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "fingerprint": self.fingerprint,
                "as_teacher": self.as_teacher, "step": self.step}


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def load_model(path: str | os.PathLike, *, model_config: ModelConfig | None = None,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Load a run directory or checkpoint for evaluation.

    Args:
        path: a run directory (holding ``checkpoint.pt``) or a checkpoint file: ours (MAE or i-MAE), an
            official facebookresearch/mae checkpoint (``{'model': ...}``) or a bare MAE state dict.
        model_config: the architecture of an external checkpoint (ours carry their own config; ignored then).
        device: where to put the model.
    """
    p = checkpoint_path(path)
    ckpt = load_checkpoint(p)
    if is_imae_checkpoint(ckpt) and ckpt.get("pixels"):  # the pixel control (imae.controls.pixel_run)
        from ..controls import PixelEncoder

        cfg = RunConfig.from_dict(ckpt["config"])
        return LoadedModel(PixelEncoder(cfg.model), None, cfg, "pixels", p, ckpt["fingerprint"],
                           decoder_loaded=False)
    if is_imae_checkpoint(ckpt):
        cfg = RunConfig.from_dict(ckpt["config"])
        kind = cfg.method
        mae = mae_from_config(cfg.model)
        imae = None
        if kind == "imae":
            imae = imae_from_config(cfg, mae)
            _load_strict(imae, ckpt["model"], p)
        else:
            load_mae_weights(mae, mae_state_dict(ckpt), source=str(p))
        record = (ckpt.get("teacher") or {}) if kind == "imae" else {}
        teacher = (record.get("path") or cfg.imae.teacher) if kind == "imae" else None
        out = LoadedModel(mae, imae, cfg, kind, p, ckpt.get("fingerprint", "unknown"), teacher,
                          step=ckpt.get("step"), as_teacher=_as_teacher(ckpt, p),
                          teacher_fingerprint=record.get("fingerprint"), teacher_step=record.get("step"))
    else:
        if model_config is None:
            raise CheckpointError(
                f"{p} is not an imae checkpoint, so it carries no architecture. Fix: pass "
                f"model_config=ModelConfig(...) (the MAE's img_size, patch_size, embed_dim, depth, ...)")
        cfg = RunConfig(model=model_config)
        mae = mae_from_config(model_config)
        state = mae_state_dict(ckpt)
        # Encoder-only releases (mae_pretrain_vit_*.pth) still give features; reconstruction checks the flag.
        load_mae_weights(mae, state, source=str(p), allow_missing=("decoder", "mask_token"))
        has_decoder = all(k in state for k in mae.state_dict() if k.startswith(("decoder", "mask_token")))
        out = LoadedModel(mae, None, cfg, "mae", p, f"external:{p.name}:{p.stat().st_size}",
                          decoder_loaded=has_decoder, as_teacher=_as_teacher(ckpt, p))
    _freeze(out.mae)
    if out.imae is not None:
        _freeze(out.imae)
    out.mae.to(device)
    if out.imae is not None:
        out.imae.to(device)
    return out


def _as_teacher(ckpt: dict, path: Path) -> str:
    return teacher_fingerprint(ckpt, path)  # the one definition training uses


def _load_strict(module: torch.nn.Module, state: dict, source: Path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit an i-MAE of its own config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}). Fix: re-train or restore an intact checkpoint")
    module.load_state_dict(state, strict=True)


def _moved_teacher(student: str | os.PathLike | None, teacher: str) -> Path | None:
    """Where an i-MAE's teacher is when the folder of runs moved as a whole: the run folder of the recorded
    name next to the i-MAE's own run folder (``runs/<teacher>`` beside ``runs/<student>``), or None."""
    if not student:
        return None
    rec = Path(teacher)
    name = rec.parent.name if rec.suffix == ".pt" else rec.name
    run = Path(student).parent if Path(student).suffix == ".pt" else Path(student)
    candidate = run.parent / name
    return candidate if name and checkpoint_path(candidate).is_file() else None


def load_reference(model: LoadedModel, reference: str | os.PathLike | LoadedModel | None = None, *,
                   device: str | torch.device = "cpu", expect_fingerprint: str | None = None) -> LoadedModel:
    """The reference encoder the metrics compare against, verified by fingerprint.

    Args:
        model: the evaluated model.
        reference: None -> an i-MAE's teacher, an MAE itself; a path -> that checkpoint (its MAE part);
            a LoadedModel -> used as is.
        device: where to put it.
        expect_fingerprint: the reference must have this fingerprint (its run's fingerprint, or its
            teacher fingerprint ``<fp>@step<N>`` for an unfinished run, or ``external:NAME:SIZE``); pass the
            same value for every model compared against one reference.
    Raises:
        ConfigError: the teacher at an i-MAE's recorded path no longer has the fingerprint its training
            recorded (it was retrained or trained further since), or the reference differs from
            ``expect_fingerprint``. An i-MAE checkpoint written before training recorded its teacher's
            fingerprint is loaded with a warning; so is an explicit ``reference`` that is not the i-MAE's
            recorded teacher.
    """
    if isinstance(reference, LoadedModel):
        ref = reference
    elif reference is not None:
        ref = load_model(reference, model_config=model.config.model, device=device)
    elif model.kind == "mae":
        ref = model
    else:
        t = model.teacher_path
        if not t:
            raise ConfigError(
                f"the i-MAE {model.path} records no teacher (config imae.teacher is empty), so there is no "
                f"default reference encoder. Fix: pass reference=PATH (--reference) to an MAE checkpoint")
        if not checkpoint_path(t).is_file():
            moved = _moved_teacher(model.path, t)
            if moved is None:
                raise ConfigError(
                    f"the i-MAE's teacher {t} (config imae.teacher of {model.path}) was not found. Fix: pass "
                    f"reference=PATH (--reference) pointing at that MAE run directory or checkpoint")
            t = moved  # the runs folder moved as a whole; the fingerprint check below proves it is the teacher
        ref = load_model(t, model_config=model.config.model, device=device)
        _check_teacher(model, ref)
    if expect_fingerprint is not None and expect_fingerprint not in (ref.fingerprint, ref.as_teacher):
        raise ConfigError(
            f"the reference {ref.path} has fingerprint {ref.as_teacher or ref.fingerprint} but "
            f"{expect_fingerprint} was expected (expect_fingerprint / reference_fingerprint): the models compared "
            f"would not share one reference. Fix: pass reference=PATH of the run with fingerprint "
            f"{expect_fingerprint}, or pin the fingerprint of the reference you mean to use")
    if ref is model:
        return ref
    if (model.kind == "imae" and reference is not None and model.teacher_fingerprint is not None
            and ref.as_teacher != model.teacher_fingerprint):
        warnings.warn(f"the reference {ref.path} ({ref.as_teacher}) is not the teacher {model.path} was trained "
                      f"with ({model.teacher_fingerprint})", stacklevel=2)
    m, r = model.config.model, ref.config.model
    if (m.img_size, m.in_chans) != (r.img_size, r.in_chans):
        raise ConfigError(f"the reference {ref.path} takes {r.img_size}px x {r.in_chans} channels but the model "
                          f"takes {m.img_size}px x {m.in_chans}; pick a reference trained on the same images")
    return ref


def _check_teacher(model: LoadedModel, teacher: LoadedModel) -> None:
    """The teacher found at an i-MAE's recorded path must be the one its training recorded."""
    recorded = model.teacher_fingerprint
    if recorded is None:
        warnings.warn(f"{model.path} was written before training recorded its teacher's fingerprint, so the "
                      f"teacher at {model.teacher_path} ({teacher.as_teacher}) cannot be verified to be the one it "
                      f"was trained with", stacklevel=3)
        return
    if teacher.as_teacher != recorded:
        def at(fp, step):
            return f"{fp} (step {step})" if step is not None else fp

        raise ConfigError(
            f"the teacher at {model.teacher_path} changed since the i-MAE {model.path} was trained: training "
            f"recorded {at(recorded, model.teacher_step)}, the checkpoint there now is "
            f"{at(teacher.as_teacher, teacher.step)}. Fix: restore that teacher run (or retrain the i-MAE "
            f"against the current one), or pass reference=PATH (--reference) to the run with fingerprint "
            f"{recorded}")


__all__ = ["LoadedModel", "load_model", "load_reference", "resolve_device"]
