"""Frozen models for evaluation: our MAE / i-MAE checkpoints, or a bare / official MAE state dict.

:func:`load_model` returns a :class:`LoadedModel`: the frozen MAE (eval mode, no gradients), the i-MAE
wrapper around it when the checkpoint is an i-MAE student, the run's :class:`~imae.config.RunConfig`, and
for an i-MAE the path of its teacher (``config.imae.teacher``).

The *reference encoder* of the separability metric and of the reconstruction baseline is, by default, the
i-MAE's teacher for an i-MAE and the model itself for an MAE, so an MAE and the i-MAE distilled from it are
scored against the same targets. :func:`load_reference` resolves it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import checkpoint_path, is_imae_checkpoint, load_checkpoint, load_mae_weights, mae_state_dict
from ..config import ModelConfig, RunConfig
from ..devices import resolve_device  # noqa: F401  (re-exported by imae.metrics)
from ..errors import CheckpointError, ConfigError
from ..models import IMAE, MaskedAutoencoderViT, mae_from_config


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
    """

    mae: MaskedAutoencoderViT
    imae: Optional[IMAE]
    config: RunConfig
    kind: str
    path: Path
    fingerprint: str
    teacher_path: Optional[str] = None
    decoder_loaded: bool = True

    def describe(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "fingerprint": self.fingerprint}


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
    if is_imae_checkpoint(ckpt):
        cfg = RunConfig.from_dict(ckpt["config"])
        kind = cfg.method
        mae = mae_from_config(cfg.model)
        imae = None
        if kind == "imae":
            i = cfg.imae
            weights = {k: getattr(i, k) for k in ("w_rec_sub", "w_rec_dom", "w_distill_sub", "w_distill_dom")}
            imae = IMAE(mae, weights=weights, teacher_input=i.teacher_input)
            _load_strict(imae, ckpt["model"], p)
        else:
            load_mae_weights(mae, mae_state_dict(ckpt), source=str(p))
        teacher = ((ckpt.get("teacher") or {}).get("path") or cfg.imae.teacher) if kind == "imae" else None
        out = LoadedModel(mae, imae, cfg, kind, p, ckpt.get("fingerprint", "unknown"), teacher)
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
                          decoder_loaded=has_decoder)
    _freeze(out.mae)
    if out.imae is not None:
        _freeze(out.imae)
    out.mae.to(device)
    if out.imae is not None:
        out.imae.to(device)
    return out


def _load_strict(module: torch.nn.Module, state: dict, source: Path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit an i-MAE of its own config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}). Fix: re-train or restore an intact checkpoint")
    module.load_state_dict(state, strict=True)


def load_reference(model: LoadedModel, reference: str | os.PathLike | LoadedModel | None = None, *,
                   device: str | torch.device = "cpu") -> LoadedModel:
    """The reference encoder the metrics compare against.

    Args:
        model: the evaluated model.
        reference: None -> an i-MAE's teacher, an MAE itself; a path -> that checkpoint (its MAE part);
            a LoadedModel -> used as is.
        device: where to put it.
    """
    if isinstance(reference, LoadedModel):
        ref = reference
    elif reference is not None:
        ref = load_model(reference, model_config=model.config.model, device=device)
    elif model.kind == "mae":
        return model
    else:
        t = model.teacher_path
        if not t:
            raise ConfigError(
                f"the i-MAE {model.path} records no teacher (config imae.teacher is empty), so there is no "
                f"default reference encoder. Fix: pass reference=PATH (--reference) to an MAE checkpoint")
        if not checkpoint_path(t).is_file():
            raise ConfigError(
                f"the i-MAE's teacher {t} (config imae.teacher of {model.path}) was not found. Fix: pass "
                f"reference=PATH (--reference) pointing at that MAE run directory or checkpoint")
        ref = load_model(t, model_config=model.config.model, device=device)
    m, r = model.config.model, ref.config.model
    if (m.img_size, m.in_chans) != (r.img_size, r.in_chans):
        raise ConfigError(f"the reference {ref.path} takes {r.img_size}px x {r.in_chans} channels but the model "
                          f"takes {m.img_size}px x {m.in_chans}; pick a reference trained on the same images")
    return ref


__all__ = ["LoadedModel", "load_model", "load_reference", "resolve_device"]
