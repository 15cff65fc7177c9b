"""Export a trained encoder for use outside imae: ``python -m imae export --to timm RUN OUT``.

``RUN`` is a run directory or checkpoint (MAE or i-MAE), or a published model by name (``cifar-mae``,
``cifar-imae``: :func:`imae.load_pretrained`'s names) or by its card ``.json``. ``OUT`` becomes a timm hub
folder that timm (>= 1.0.16) loads offline, and that works unchanged as ``hf-hub:`` once uploaded:

    import timm
    vit = timm.create_model("local-dir:OUT", pretrained=True)   # the encoder, eval it and go
    tokens = vit.forward_features(images)   # (N, 1 + L, D), token 0 is cls: as our forward_features
    cls = vit(images)                       # (N, D): the normalised cls token (no head, global_pool="token")
    cfg = timm.data.resolve_data_config({}, model=vit)   # input size, mean, std of the training data

Our MAE encoder already uses timm's ``VisionTransformer`` parameter names and layout (``cls_token``,
``pos_embed`` with a slot for the cls token, ``patch_embed.proj``, ``blocks.N.*`` built from timm's ``Block``,
final ``norm`` with eps 1e-6), so the weights are the encoder's part of the state dict. Written into ``OUT``:

* ``config.json``: timm's hub config: ``architecture`` (the nearest registered ViT name; ``model_args``
  override every size in it), ``model_args`` (image and patch size, width, depth, heads, ``global_pool`` and
  ``fc_norm``: see TOOLCHAIN item 15), ``pretrained_cfg`` (input size, mean, std, interpolation, licence),
  ``num_classes: 0``;
* ``model.safetensors``: the encoder (``model.pt`` from ``torch.save`` when safetensors is not installed).
  Float32 for a run, float16 for a published model (its stored precision, so nothing is lost);
* ``timm_kwargs.json``: exactly the keyword arguments of ``timm.models.vision_transformer.VisionTransformer``
  (for building the network by hand);
* ``export.json``: where the weights came from (a run's folder name and fingerprint, or the published name
  and its sha256; never a machine path), which files hold what, the input normalisation, the versions;
* ``README.md``: the model card (:mod:`imae.cards`: what it is, data, recipe, measured results from the
  stored records, licence, citation).

Differences a user should know: our position embedding is the fixed 2-D sin-cos table (zero for the cls
slot); timm holds it as a learnable parameter, so it changes if the exported model is fine-tuned. The head is
empty (``num_classes=0``) and ``global_pool="token"``, so ``vit(images)`` returns the normalised cls token.
The full encoder + decoder (and an i-MAE's splitter) stay available through :func:`imae.load_pretrained`.

:func:`load_timm_encoder` goes the other way: any timm model (such a folder, ``local-dir:PATH``,
``hf-hub:ID``) wrapped so that our metrics read its tokens (``python -m imae evaluate`` on a timm folder).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .cards import WEIGHTS_LICENSE, Source
from .errors import ImaeError, os_reason, storage_error

ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
FORMATS = ("timm",)
EXPORT_FORMAT = "imae-export-timm-v1"
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16}
# Registered timm names by (embed_dim, depth, num_heads); ``model_args`` override every size anyway.
TIMM_ARCHITECTURES = {(192, 12, 3): "vit_tiny_patch16_224", (384, 12, 6): "vit_small_patch16_224",
                      (768, 12, 12): "vit_base_patch16_224", (1024, 24, 16): "vit_large_patch16_224",
                      (1280, 32, 16): "vit_huge_patch14_224"}
DEFAULT_ARCHITECTURE = "vit_tiny_patch16_224"
TIMM_PREFIXES = ("local-dir:", "hf-hub:", "timm:")


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


def timm_architecture(model_cfg) -> str:
    """The registered timm ViT nearest our encoder (same width, depth and heads), else ViT-Tiny; the hub
    config's ``model_args`` override its image size, patch size and every width, so the name only labels."""
    return TIMM_ARCHITECTURES.get((int(model_cfg.embed_dim), int(model_cfg.depth), int(model_cfg.num_heads)),
                                  DEFAULT_ARCHITECTURE)


def timm_hub_config(model_cfg, dataset: str) -> dict:
    """timm's ``config.json`` for our encoder of ``model_cfg`` trained on ``dataset`` (its mean and std are
    the input normalisation). ``global_pool`` and ``fc_norm`` sit in ``model_args`` (TOOLCHAIN item 15)."""
    from .data.datasets import dataset_info

    info = dataset_info(dataset)
    kwargs = timm_vit_kwargs(model_cfg)
    size = [kwargs["in_chans"], kwargs["img_size"], kwargs["img_size"]]
    return {
        "architecture": timm_architecture(model_cfg),
        "num_classes": 0,
        "num_features": kwargs["embed_dim"],
        "global_pool": kwargs["global_pool"],
        "model_args": kwargs,
        "pretrained_cfg": {
            "input_size": size, "fixed_input_size": True, "interpolation": "bicubic", "crop_pct": 1.0,
            "crop_mode": "center", "mean": [float(m) for m in info.mean], "std": [float(s) for s in info.std],
            "num_classes": 0, "pool_size": None, "first_conv": "patch_embed.proj", "classifier": "head",
            "custom_load": False, "license": WEIGHTS_LICENSE,
        },
    }


def encoder_state_dict(mae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's tensors of a :class:`~imae.models.MaskedAutoencoderViT` under timm's names (ours are
    the same): contiguous CPU copies, decoder and mask token left out."""
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in mae.state_dict().items()
          if k.startswith(ENCODER_PREFIXES)}
    if "cls_token" not in sd or "pos_embed" not in sd:
        raise ImaeError(f"{type(mae).__name__} has no cls_token/pos_embed: not an MAE encoder")
    return sd


# ------------------------------------------------------------------------------------------- sources
def _published_card(run: str | os.PathLike) -> Optional[Path]:
    """The card of a published model named ``run`` (or ``run`` itself when it is a card), else None."""
    from .pretrained import find_card, read_card

    p = Path(run)
    if p.suffix == ".json" and p.is_file():
        read_card(p)  # refuses a JSON that is not a weights card
        return p
    if p.exists() or os.sep in str(run) or "/" in str(run):
        return None
    return find_card(str(run))


def resolve_source(run: str | os.PathLike, *, model_config=None) -> Source:
    """A run directory or checkpoint, a published model's name, or its card, as a :class:`imae.cards.Source`
    with its MAE loaded (float32, eval mode)."""
    from .pretrained import WeightsError, load_pretrained

    try:
        card_path = _published_card(run)
    except WeightsError as e:
        raise ImaeError(f"{run} is neither a run directory or checkpoint nor a published model: {e}") from e
    if card_path is not None:
        model = load_pretrained(str(card_path))
        card = model.card
        mae = model if card["kind"] == "mae" else model.mae
        from .config import RunConfig

        return Source(mae.eval(), RunConfig.from_dict(card["config"]), card["kind"], card["fingerprint"],
                      card["name"], "published", getattr(torch, card.get("dtype", "float32")), card=card)
    from .metrics.loading import load_model

    loaded = load_model(run, model_config=model_config, device="cpu")
    if loaded.kind not in ("mae", "imae"):
        raise ImaeError(f"{run} holds a {loaded.kind} model, not an MAE or i-MAE encoder; nothing to export")
    p = Path(run)
    name = p.parent.name if p.is_file() else p.name
    return Source(loaded.mae, loaded.config, loaded.kind, loaded.fingerprint, name, "run", run=p)


# ----------------------------------------------------------------------------------------------- export
def _save_weights(sd: dict, out: Path, metadata: dict) -> Path:
    try:
        from safetensors.torch import save_file
    except ImportError:  # safetensors is optional: timm loads torch files as well
        path = out / "model.pt"
        torch.save(sd, path)
        return path
    path = out / "model.safetensors"
    save_file(sd, str(path), metadata={k: str(v) for k, v in metadata.items()})
    os.chmod(path, 0o644)  # readable like the folder's other files (safetensors writes it owner-only)
    return path


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def export_timm(run: str | os.PathLike, out: str | os.PathLike, *, model_config=None, dtype: str = "auto",
                card: bool = True) -> dict:
    """Write the encoder of ``run`` into the timm hub folder ``out``; returns what ``export.json`` says.

    Args:
        run: an MAE or i-MAE run directory or checkpoint (an external MAE checkpoint needs ``model_config``),
            or a published model's name (``cifar-mae``) or card ``.json``.
        out: the folder (created; files of an earlier export are replaced).
        dtype: ``auto`` (float32 for a run, a published model's stored float16), ``float32`` or ``float16``.
        card: write ``README.md``, the model card.
    """
    if dtype not in DTYPES:
        raise ImaeError(f"dtype={dtype!r}; choose one of {list(DTYPES)}")
    src = resolve_source(run, model_config=model_config)
    cast = DTYPES[dtype] or src.stored_dtype or torch.float32
    sd = {k: v.to(cast) if v.is_floating_point() else v for k, v in encoder_state_dict(src.mae).items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = src.config.data.dataset
    hub = timm_hub_config(src.config.model, dataset)
    meta = {"format": EXPORT_FORMAT, "source": src.name, "origin": src.origin, "kind": src.kind,
            "fingerprint": src.fingerprint, "dataset": dataset}
    for stale in ("model.safetensors", "model.pt"):  # timm prefers model.safetensors: never leave an old one
        (out / stale).unlink(missing_ok=True)
    weights = _save_weights(sd, out, meta)
    _write_json(out / "config.json", hub)
    _write_json(out / "timm_kwargs.json", hub["model_args"])
    record = {**meta, "weights": weights.name, "dtype": str(cast).replace("torch.", ""), "config": "config.json",
              "kwargs": "timm_kwargs.json", "architecture": hub["architecture"],
              "class": "timm.models.vision_transformer.VisionTransformer",
              "n_params": int(sum(v.numel() for v in sd.values())),
              "input": {"img_size": hub["model_args"]["img_size"], "mean": hub["pretrained_cfg"]["mean"],
                        "std": hub["pretrained_cfg"]["std"]},
              "load": 'timm.create_model("local-dir:<this folder>", pretrained=True)',
              "notes": "pos_embed is MAE's fixed 2-D sin-cos table (cls row zero); timm trains it if fine-tuned",
              "torch": torch.__version__}
    if src.card is not None:
        record["published"] = {"name": src.card["name"], "file": src.card["file"], "sha256": src.card["sha256"]}
    try:
        import timm

        record["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    if card:
        from .cards import export_card

        (out / "README.md").write_text(export_card(src, record))
        record["card"] = "README.md"
    _write_json(out / "export.json", record)
    return record


def export(run, out, *, to: str = "timm", **kwargs) -> dict:
    """:func:`export_timm` (the one format); a failure of the machine (read-only or full disk, no permission)
    is one :class:`~imae.errors.StorageError` line naming the file."""
    if to not in FORMATS:
        raise ImaeError(f"cannot export to {to!r}; choose one of {list(FORMATS)}")
    try:
        return export_timm(run, out, **kwargs)
    except OSError as e:
        if os_reason(e) is None:
            raise
        raise storage_error(e, doing="exporting", path=getattr(e, "filename", None) or out) from e


# ------------------------------------------------------------------------------------- timm -> imae
def is_timm_source(source: str | os.PathLike) -> bool:
    """``local-dir:``/``hf-hub:``/``timm:`` names, and folders holding a timm ``config.json`` (with an
    ``architecture``) and no imae checkpoint."""
    s = str(source)
    if s.startswith(TIMM_PREFIXES):
        return True
    p = Path(s)
    if not (p.is_dir() and (p / "config.json").is_file()) or (p / "checkpoint.pt").exists():
        return False
    try:
        return "architecture" in json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False


def _timm_name(source: str | os.PathLike) -> str:
    s = str(source)
    if s.startswith("timm:"):
        return s[len("timm:"):]
    return s if s.startswith(TIMM_PREFIXES) else f"local-dir:{Path(s)}"


class TimmTokens(torch.nn.Module):
    """A timm model as our metrics read an encoder: ``forward_features(x)`` -> (N, 1 + L, D), token 0 the
    class token (or, for a model without one, the mean of its tokens: pool ``mean`` is then the only
    meaningful pool), then the patch tokens (other prefix tokens, e.g. registers, dropped).

    ``x`` arrives normalised with the DATASET's mean and std (what the metrics' loaders do); when the model
    was trained with other constants, or takes another image size, the wrapper converts (exactly, an affine
    map) and resizes (bicubic, antialiased) first, as the model's ``pretrained_cfg`` asks.
    """

    def __init__(self, model: torch.nn.Module, *, data_mean, data_std, model_mean, model_std, size: int,
                 data_size: int):
        super().__init__()
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.has_class_token = getattr(model, "cls_token", None) is not None
        dm, ds = torch.tensor(data_mean).view(1, -1, 1, 1), torch.tensor(data_std).view(1, -1, 1, 1)
        mm, ms = torch.tensor(model_mean).view(1, -1, 1, 1), torch.tensor(model_std).view(1, -1, 1, 1)
        self.convert = not (torch.equal(dm, mm) and torch.equal(ds, ms))
        # x_model = (x * ds + dm - mm) / ms = x * scale + shift
        self.register_buffer("scale", ds / ms, persistent=False)
        self.register_buffer("shift", (dm - mm) / ms, persistent=False)
        self.size = int(size)
        self.resize = int(size) != int(data_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.convert:
            x = x * self.scale + self.shift
        if self.resize:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bicubic",
                                                align_corners=False, antialias=True)
        t = self.model.forward_features(x)
        if t.ndim != 3:
            raise ImaeError(f"{type(self.model).__name__}.forward_features gives shape {tuple(t.shape)}, not "
                            "tokens (N, T, D): only token encoders (the ViT family) can be probed this way")
        patches = t[:, self.num_prefix_tokens:]
        first = t[:, :1] if self.has_class_token else patches.mean(dim=1, keepdim=True)
        return torch.cat([first, patches], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@dataclass
class TimmEncoder:
    """A loaded timm encoder: the wrapper our metrics read, and what describes it."""

    encoder: TimmTokens
    name: str  # what timm.create_model was given
    architecture: str
    pools: tuple
    input: dict  # size, mean, std the model takes; resized / renormalised from the dataset's
    export: Optional[dict] = None  # the folder's export.json (an imae export), if any


def load_timm_encoder(source: str | os.PathLike, *, dataset: str = "cifar10") -> TimmEncoder:
    """Any timm model, with its pretrained weights, wrapped for our metrics on ``dataset``'s images.

    Args:
        source: a timm hub folder (what ``python -m imae export --to timm`` writes, or any other),
            ``local-dir:PATH``, ``hf-hub:ID`` (needs the network) or ``timm:NAME`` (timm's own weights).
        dataset: the images it will see (their normalisation is converted to the model's).
    """
    import timm

    from .data.datasets import dataset_info

    name = _timm_name(source)
    if name.startswith("local-dir:") and not (Path(name[len("local-dir:"):]) / "config.json").is_file():
        raise ImaeError(f"{source}: no timm config.json there. Fix: pass a folder written by `python -m imae "
                        "export --to timm` (or any timm hub folder: config.json + model.safetensors)")
    try:
        model = timm.create_model(name, pretrained=True)
    except (RuntimeError, FileNotFoundError, OSError, ValueError, KeyError) as e:
        raise ImaeError(f"timm could not load {name} with its weights ({type(e).__name__}: {e})") from e
    model.eval().requires_grad_(False)
    info = dataset_info(dataset)
    cfg = timm.data.resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    enc = TimmTokens(model, data_mean=info.mean, data_std=info.std, model_mean=cfg["mean"], model_std=cfg["std"],
                     size=size, data_size=info.img_size)
    record = None
    if name.startswith("local-dir:"):
        f = Path(name[len("local-dir:"):]) / "export.json"
        if f.is_file():
            record = json.loads(f.read_text())
    pools = ("cls", "mean") if enc.has_class_token else ("mean",)
    return TimmEncoder(enc, name, (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
                       or type(model).__name__, pools,
                       {"size": size, "mean": [float(m) for m in cfg["mean"]], "std": [float(s) for s in cfg["std"]],
                        "data_size": info.img_size, "resized": enc.resize, "renormalised": enc.convert},
                       record)


# ---------------------------------------------------------------------------------------- portability
# An absolute path of a machine: /tmp/..., /home/..., C:\... (not URLs, not "img/s", not " / ").
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.-]+/)+[\w.-]*|\b[A-Za-z]:\\[\w\\.-]+")


def absolute_paths(text: str) -> list[str]:
    """The machine paths in ``text`` (what no published file may hold)."""
    return ABSOLUTE_PATH.findall(text)


__all__ = ["export", "export_timm", "timm_vit_kwargs", "timm_hub_config", "timm_architecture", "encoder_state_dict",
           "resolve_source", "Source", "is_timm_source", "load_timm_encoder", "TimmEncoder", "TimmTokens",
           "absolute_paths"]
