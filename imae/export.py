"""Export a trained encoder for use outside imae: ``python -m imae export --to timm RUN OUT``.

Our MAE encoder already uses timm's ``VisionTransformer`` parameter names and layout (``cls_token``,
``pos_embed`` with a slot for the cls token, ``patch_embed.proj``, ``blocks.N.*`` built from timm's ``Block``,
final ``norm`` with eps 1e-6), so the export is the encoder's part of the state dict plus the constructor
arguments that rebuild the same network:

    import json, timm
    from safetensors.torch import load_file
    kwargs = json.load(open("OUT/timm_kwargs.json"))
    vit = timm.models.vision_transformer.VisionTransformer(**kwargs)
    vit.load_state_dict(load_file("OUT/model.safetensors"), strict=True)
    tokens = vit.forward_features(images)   # (N, 1 + L, D), token 0 is cls: as our forward_features

Written into ``OUT``: ``model.safetensors`` (``model.pt`` from ``torch.save`` when safetensors is not
installed), ``timm_kwargs.json`` (exactly the keyword arguments of ``VisionTransformer``) and
``export.json`` (where the weights came from, which file holds them, the input normalisation).

Differences a user should know: our position embedding is the fixed 2-D sin-cos table (zero for the cls
slot); timm holds it as a learnable parameter, so it changes if the exported model is fine-tuned. The head is
empty (``num_classes=0``) and ``global_pool="token"``, so ``vit(images)`` returns the normalised cls token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import ImaeError

ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
FORMATS = ("timm",)


def timm_vit_kwargs(model_cfg) -> dict:
    """``timm.models.vision_transformer.VisionTransformer`` keyword arguments for our encoder of
    ``model_cfg`` (an :class:`imae.config.ModelConfig`): plain JSON values only."""
    return {
        "img_size": int(model_cfg.img_size),
        "patch_size": int(model_cfg.patch_size),
        "in_chans": int(model_cfg.in_chans),
        "num_classes": 0,  # no head: features only
        "global_pool": "token",  # vit(x) -> the normalised cls token, as our probes' "cls" pooling
        "embed_dim": int(model_cfg.embed_dim),
        "depth": int(model_cfg.depth),
        "num_heads": int(model_cfg.num_heads),
        "mlp_ratio": float(model_cfg.mlp_ratio),
        "qkv_bias": True,
        "class_token": True,
        "no_embed_class": False,  # pos_embed has 1 + L rows; row 0 (zeros) is added to the cls token
        "fc_norm": False,  # the final norm sits before pooling, on every token (our encoder's `norm`)
    }


def encoder_state_dict(mae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's tensors of a :class:`~imae.models.MaskedAutoencoderViT` under timm's names (ours are
    the same): contiguous CPU copies, decoder and mask token left out."""
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in mae.state_dict().items()
          if k.startswith(ENCODER_PREFIXES)}
    if "cls_token" not in sd or "pos_embed" not in sd:
        raise ImaeError(f"{type(mae).__name__} has no cls_token/pos_embed: not an MAE encoder")
    return sd


def _save_weights(sd: dict, out: Path, metadata: dict) -> Path:
    try:
        from safetensors.torch import save_file
    except ImportError:  # safetensors is optional: timm loads torch files as well
        path = out / "model.pt"
        torch.save(sd, path)
        return path
    path = out / "model.safetensors"
    save_file(sd, str(path), metadata={k: str(v) for k, v in metadata.items()})
    return path


def export_timm(run: str | os.PathLike, out: str | os.PathLike, *, model_config=None) -> dict:
    """Write the encoder of ``run`` (an MAE or i-MAE run directory or checkpoint; an external MAE
    checkpoint needs ``model_config``) into the folder ``out`` for timm; returns what ``export.json`` says."""
    from .metrics.loading import load_model

    loaded = load_model(run, model_config=model_config, device="cpu")
    kwargs = timm_vit_kwargs(loaded.config.model)
    sd = encoder_state_dict(loaded.mae)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .data.datasets import DATASETS

    info = DATASETS.get(loaded.config.data.dataset)
    meta = {"format": "imae-export-timm-v1", "source": str(run), "kind": loaded.kind,
            "fingerprint": loaded.fingerprint, "dataset": loaded.config.data.dataset}
    weights = _save_weights(sd, out, meta)
    (out / "timm_kwargs.json").write_text(json.dumps(kwargs, indent=2) + "\n")
    record = {**meta, "weights": weights.name, "kwargs": "timm_kwargs.json",
              "class": "timm.models.vision_transformer.VisionTransformer",
              "input": {"img_size": kwargs["img_size"], "mean": list(info.mean) if info else None,
                        "std": list(info.std) if info else None},
              "notes": "pos_embed is MAE's fixed 2-D sin-cos table (cls row zero); timm trains it if fine-tuned",
              "torch": torch.__version__}
    try:
        import timm

        record["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    (out / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def export(run, out, *, to: str = "timm", **kwargs) -> dict:
    if to not in FORMATS:
        raise ImaeError(f"cannot export to {to!r}; choose one of {list(FORMATS)}")
    return export_timm(run, out, **kwargs)


__all__ = ["export", "export_timm", "timm_vit_kwargs", "encoder_state_dict"]
