"""One typed configuration, built in one place.

A run is described by a :class:`RunConfig` (model, data, i-MAE and training sections). Configs come from a
named preset plus overrides: ``build_config("tiny", method="imae", epochs=5, same_prob=0.5)``. Overrides may
use a bare field name when it is unique across sections (``epochs``) or a dotted one (``train.epochs``).
Every value is type- and range-checked here, so a hand-typed papermill parameter such as ``-p epochs ten``
fails with a message naming the parameter and the fix instead of deep inside training.

Derived values (the learning rate from ``blr``) are computed once by :func:`derived` and logged with the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from .design import TEACHER_RECIPE, section
from .errors import ConfigError

METHODS = ("mae", "imae")


@dataclass
class ModelConfig:
    """MAE ViT architecture (the i-MAE student and its teacher share it)."""

    img_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 3
    decoder_embed_dim: int = 64
    decoder_depth: int = 2
    decoder_num_heads: int = 2
    mlp_ratio: float = 4.0
    norm_pix_loss: bool = False  # the released i-MAE code has it off (the flag sits in a docstring)


# The architecture: every ModelConfig field but the loss target (a teacher and its student must agree on these).
ARCH_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "norm_pix_loss")


@dataclass
class DataConfig:
    """Which images, how they are paired and augmented."""

    dataset: str = "cifar10"
    root: Optional[str] = None  # None: $IMAE_DATA, else ./data
    subset_per_class: Optional[int] = None  # first N images of each class (CPU runs); override 0: every image
    same_prob: float = 1.0  # P(partner image from the same class); the released code hard-codes 1.0
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    loader: str = "auto"  # tensor (in memory, batched augmentation on the device) | pil (DataLoader) | auto
    num_workers: int = 4  # pil loader only
    download: bool = True  # try torchvision's download when the data root lacks the dataset


@dataclass
class IMAEConfig:
    """i-MAE specifics; ignored by ``method="mae"``."""

    teacher: Optional[str] = None  # path to a trained MAE checkpoint (or its run directory)
    init: str = "teacher"  # teacher: start the student from the teacher's weights | random
    teacher_input: str = "clean"  # clean: teacher sees x_sub and x_dom | mixed: released code's x_mix twice
    alpha_mode: str = "random"  # random: lambda ~ U(0,1) per batch | fixed | range
    alpha: float = 0.3  # subordinate weight for alpha_mode=fixed
    alpha_range: tuple[float, float] = (0.0, 0.5)  # for alpha_mode=range
    # The loss terms' weights (every field named w_*; imae.models.LossWeights.from_config reads them).
    w_rec_sub: float = 1.0
    w_rec_dom: float = 1.0
    w_distill_sub: float = 1.0
    w_distill_dom: float = 1.0


@dataclass
class TrainConfig:
    """Optimisation and engine settings."""

    method: str = "mae"
    epochs: int = 30
    batch_size: int = 128  # global batch per micro-step (all processes together)
    accum_iter: int = 1
    blr: float = 1.5e-3  # base lr; lr = blr * batch_size * accum_iter / 256
    min_lr: float = 0.0
    warmup_epochs: float = 2.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    mask_ratio: float = 0.75
    seed: int = 0
    amp: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU | bf16 | off
    compile: bool = False
    batched: bool = True  # one decoder/teacher call for both branches (False: the released code's layout)
    device: str = "auto"
    log_every: int = 0  # steps; 0: every step on CPU, every 25 on CUDA
    ckpt_every: int = 0  # steps; 0: at the end of every epoch
    nonfinite: str = "stop"  # stop | restart-fp32 (reload the last good checkpoint, continue without AMP)
    init_from: Optional[str] = None  # MAE only: start from this MAE run's weights (the equal-compute control)


@dataclass
class RunConfig:
    preset: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    imae: IMAEConfig = field(default_factory=IMAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def method(self) -> str:
        return self.train.method

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists, plain types only

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a run config must be a mapping, got {type(d).__name__}")
        problems = config_key_problems(d)
        if problems:
            path, close = problems[0]
            hint = f" Did you mean {close[0]!r}?" if close else ""
            where = (f"unknown config section {path[0]!r}; expected one of {_SECTION_NAMES}" if len(path) == 1
                     else f"unknown field {path[1]!r} in config section {path[0]!r}")
            more = f" ({len(problems) - 1} more unknown key(s): {[_dotted(p) for p, _ in problems[1:]]})" \
                if len(problems) > 1 else ""
            raise ConfigError(f"{where}.{hint}{more}")
        kw = {"preset": d.get("preset", "tiny")}
        for name, sec_cls in _SECTIONS.items():
            sec = d.get(name) or {}
            if not isinstance(sec, dict):
                raise ConfigError(f"config section {name!r} must be a mapping of fields, got {sec!r}")
            sec = dict(sec)
            kw[name] = sec_cls(**{k: coerce(f"{name}.{k}", v, _hints(sec_cls)[k]) for k, v in sec.items()})
        cfg = cls(**kw)
        if cfg.data.subset_per_class == 0:  # "every image", spelled so that it survives build_config's None-skip
            cfg.data.subset_per_class = None
        validate(cfg)
        return cfg


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "imae": IMAEConfig, "train": TrainConfig}
_SECTION_NAMES = ["preset", *_SECTIONS]


def config_key_problems(d: dict) -> list[tuple[tuple[str, ...], list[str]]]:
    """The keys of a config mapping (``RunConfig.to_dict()``'s layout) that no config has: [(path, the
    nearest known names)], e.g. ``[(("train", "epocs"), ["epochs"])]``; empty when every key is known."""
    out = []
    for key, value in d.items():
        if key not in _SECTION_NAMES:
            out.append(((str(key),), difflib.get_close_matches(str(key), _SECTION_NAMES, n=1)))
        elif key in _SECTIONS and isinstance(value, dict):
            names = _field_names(_SECTIONS[key])
            out += [((key, str(k)), difflib.get_close_matches(str(k), names, n=1)) for k in value if k not in names]
    return out


def _dotted(path: tuple) -> str:
    return ".".join(path)

# Fields that change how a run executes but not what it computes: excluded from the fingerprint. (The data
# root is where the data lies, not which data; data.loader stays in: the two loaders resample differently.)
_OPERATIONAL = {
    "data.root", "data.num_workers", "data.download", "train.device", "train.log_every",
    "train.ckpt_every", "train.compile", "train.nonfinite", "train.amp", "train.batched",
}


# ----------------------------------------------------------------------------------------------- presets
def _vit(embed, depth, heads, dec, dec_depth, dec_heads, img, patch):
    return dict(img_size=img, patch_size=patch, embed_dim=embed, depth=depth, num_heads=heads,
                decoder_embed_dim=dec, decoder_depth=dec_depth, decoder_num_heads=dec_heads)


# The presets, smallest first (this order is the scale order everywhere: imae.companion.findings, the command
# line's help).
PRESETS: dict[str, dict[str, Any]] = {
    # Runs the whole pipeline on 2 CPU cores in minutes (CIFAR-10, first 100 images per class).
    "tiny": dict(
        model=_vit(96, 4, 3, 64, 2, 2, img=32, patch=4),
        data=dict(dataset="cifar10", subset_per_class=100),
        train=dict(epochs=30, batch_size=128, blr=1.5e-3, warmup_epochs=2),
        train_imae=dict(epochs=20),
    ),
    # The CPU edition: the tiny architecture on ALL 50,000 CIFAR-10 training images, where 2 cores train an
    # MAE that beats its untrained encoder (SPEC, "CPU calibration"). The MAE teacher/baseline follows the
    # teacher recipe (imae.design.TEACHER_RECIPE: norm-pix targets), the i-MAE student plain pixels.
    "small": dict(
        model=_vit(96, 4, 3, 64, 2, 2, img=32, patch=4),
        model_mae=section(TEACHER_RECIPE, "model"),
        data=dict(dataset="cifar10"),
        train=dict(epochs=10, batch_size=128, blr=1.5e-3, warmup_epochs=1),
        # Eager: on 2 CPU cores torch.compile's gain was within the run-to-run noise (benchmarks/cpu_edition.py).
        train_imae=dict(epochs=4, warmup_epochs=0.5),
    ),
    # CIFAR (not given by the paper's code; our decision): ViT-Tiny, patch 2, decoder 128-d x 4.
    "cifar": dict(
        model=_vit(192, 12, 3, 128, 4, 4, img=32, patch=2),
        data=dict(dataset="cifar10"),
        train=dict(epochs=100, batch_size=1024, blr=1.5e-4, warmup_epochs=5),
        train_imae=dict(blr=1e-4),
    ),
    # Tiny-ImageNet as in the released code: ViT-S/8 at 64 px, decoder 192-d x 6.
    "tinyimagenet": dict(
        model=_vit(384, 12, 6, 192, 6, 6, img=64, patch=8),
        data=dict(dataset="tinyimagenet"),
        train=dict(epochs=100, batch_size=256, blr=1.5e-4, warmup_epochs=5),
        train_imae=dict(blr=1e-4),
    ),
    # ImageNet as in the released code: ViT-B/16, decoder 512-d x 8; i-MAE 50 epochs, warmup 5, batch 256.
    "imagenet": dict(
        model=_vit(768, 12, 12, 512, 8, 16, img=224, patch=16),
        data=dict(dataset="imagenet", loader="pil", num_workers=10),
        train=dict(epochs=400, batch_size=256, accum_iter=16, blr=1.5e-4, warmup_epochs=40),
        train_imae=dict(epochs=50, accum_iter=1, blr=1e-4, warmup_epochs=5),
    ),
}

# The presets 2 CPU cores train within the book's budget; every other one needs a GPU.
CPU_PRESETS = ("tiny", "small")
GPU_PRESETS = tuple(p for p in PRESETS if p not in CPU_PRESETS)

def build_config(preset: str = "tiny", method: str = "mae", **overrides: Any) -> RunConfig:
    """Preset + method + overrides -> a validated :class:`RunConfig`.

    Args:
        preset: one of :data:`PRESETS` (their names, smallest first: ``tuple(PRESETS)``).
        method: ``mae`` or ``imae``.
        **overrides: ``field=value`` (unique field name) or ``{"section.field": value}``; ``None`` values
            are ignored so notebook parameters can default to "preset's choice". To lift a preset's subset
            and train on every image, pass ``subset_per_class=0`` (stored as None).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    p = PRESETS[preset]
    d = {"preset": preset, "model": {**p.get("model", {}), **p.get(f"model_{method}", {})},
         "data": dict(p.get("data", {})),
         "imae": dict(p.get("imae", {})), "train": {**p.get("train", {}), **p.get(f"train_{method}", {})}}
    d["train"]["method"] = method
    for key, value in overrides.items():
        if value is None:
            continue
        sec, name = _resolve_key(key)
        d[sec][name] = value
    return RunConfig.from_dict(d)


def _resolve_key(key: str) -> tuple[str, str]:
    if "." in key:
        sec, name = key.split(".", 1)
        if sec in _SECTIONS and name in _field_names(_SECTIONS[sec]):
            return sec, name
    else:
        owners = [s for s, c in _SECTIONS.items() if key in _field_names(c)]
        if len(owners) == 1:
            return owners[0], key
        if len(owners) > 1:
            raise ConfigError(f"parameter {key!r} is ambiguous; write one of {[f'{s}.{key}' for s in owners]}")
    known = [n for c in _SECTIONS.values() for n in _field_names(c)]
    known += [f"{s}.{n}" for s, c in _SECTIONS.items() for n in _field_names(c)]
    close = difflib.get_close_matches(key, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown config parameter {key!r}.{hint}")


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


# ------------------------------------------------------------------------------------------ type checks
def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return f"{_type_name(args[0])} or None"
    if origin is tuple:
        return "a pair of numbers, e.g. [0.2, 1.0]"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def coerce(name: str, value: Any, hint) -> Any:
    """Check ``value`` against the type ``hint`` (``int``, ``float``, ``bool``, ``str``, a pair of numbers, or
    ``Optional`` of one); return it in canonical form (an int for a float becomes a float) or raise a
    ConfigError that names ``name``, what it must be and the fix. Config fields and notebook parameters
    (:mod:`imae.parameters`) are checked by this one function, so their messages read alike."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        return coerce(name, value, inner)
    ok = False
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        ok = (isinstance(value, (list, tuple)) and len(value) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
        value = tuple(float(v) for v in value) if ok else value
    if not ok:
        short = name.split(".")[-1]
        example = {int: "10", float: "0.5", bool: "True", str: "name"}.get(hint, "[0.2, 1.0]")
        error = ConfigError(
            f"{name} must be {_type_name(hint)}, got {value!r} ({type(value).__name__}). "
            f"Fix: pass e.g. `-p {short} {example}` to papermill or `{short}={example}` in Python."
        )
        # what a caller needs to say the fix in its own terms (the command line: --set name=example)
        error.parameter, error.expected, error.example, error.value = name, _type_name(hint), example, value
        raise error
    return value


# ---------------------------------------------------------------------------------------------- ranges
def validate(cfg: RunConfig) -> None:
    """Range and consistency checks; raises ConfigError naming the value and the fix."""
    m, d, i, t = cfg.model, cfg.data, cfg.imae, cfg.train

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    from .data.datasets import DATASETS  # late: data imports config for nothing, but keep it acyclic

    need(t.method in METHODS, f"train.method={t.method!r} is unknown; choose one of {list(METHODS)}")
    need(d.dataset in DATASETS, f"data.dataset={d.dataset!r} is unknown; choose one of {sorted(DATASETS)}")
    need(m.img_size > 0 and m.patch_size > 0, "model.img_size and model.patch_size must be positive")
    need(m.img_size % m.patch_size == 0,
         f"model.img_size={m.img_size} is not divisible by model.patch_size={m.patch_size}; "
         f"pick a patch size that divides it (e.g. {[p for p in (2, 4, 8, 16) if m.img_size % p == 0]})")
    need(m.embed_dim % m.num_heads == 0,
         f"model.embed_dim={m.embed_dim} is not divisible by model.num_heads={m.num_heads}")
    need(m.decoder_embed_dim % m.decoder_num_heads == 0,
         f"model.decoder_embed_dim={m.decoder_embed_dim} is not divisible by "
         f"model.decoder_num_heads={m.decoder_num_heads}")
    need(0.0 < t.mask_ratio < 1.0, f"mask_ratio={t.mask_ratio} must lie strictly between 0 and 1 (e.g. 0.75)")
    n_patches = (m.img_size // m.patch_size) ** 2
    need(int(n_patches * (1 - t.mask_ratio)) >= 1,
         f"mask_ratio={t.mask_ratio} leaves no visible patch out of {n_patches}; lower it")
    need(0.0 <= d.same_prob <= 1.0, f"same_prob={d.same_prob} must lie in [0, 1] (1: same-class pairs)")
    lo, hi = d.crop_scale
    need(0.0 < lo <= hi <= 1.0, f"data.crop_scale={list(d.crop_scale)} must satisfy 0 < lo <= hi <= 1")
    need(d.subset_per_class is None or d.subset_per_class >= 1,
         f"data.subset_per_class={d.subset_per_class} must be a positive number of images per class, "
         f"or 0 for every image")
    need(d.loader in ("auto", "tensor", "pil"), f"data.loader={d.loader!r}; choose auto, tensor or pil")
    need(i.alpha_mode in ("random", "fixed", "range"),
         f"alpha_mode={i.alpha_mode!r} is unknown; choose random, fixed or range")
    need(0.0 < i.alpha <= 0.5, f"alpha={i.alpha} must lie in (0, 0.5]: it is the SUBORDINATE image's weight")
    alo, ahi = i.alpha_range
    need(0.0 <= alo < ahi <= 0.5, f"alpha_range={list(i.alpha_range)} must satisfy 0 <= lo < hi <= 0.5")
    need(i.teacher_input in ("clean", "mixed"), f"teacher_input={i.teacher_input!r}; choose clean or mixed")
    need(i.init in ("teacher", "random"), f"imae.init={i.init!r}; choose teacher or random")
    for w in (f.name for f in dataclasses.fields(i) if f.name.startswith("w_")):  # every loss weight
        need(getattr(i, w) >= 0, f"imae.{w}={getattr(i, w)} must be >= 0")
    need(t.epochs >= 1, f"epochs={t.epochs} must be >= 1")
    need(t.batch_size >= 1, f"batch_size={t.batch_size} must be >= 1")
    need(t.accum_iter >= 1, f"accum_iter={t.accum_iter} must be >= 1")
    need(t.blr > 0, f"blr={t.blr} must be > 0")
    need(t.warmup_epochs >= 0, f"warmup_epochs={t.warmup_epochs} must be >= 0")
    need(t.amp in ("auto", "bf16", "off"), f"amp={t.amp!r}; choose auto, bf16 or off")
    need(t.nonfinite in ("stop", "restart-fp32"), f"nonfinite={t.nonfinite!r}; choose stop or restart-fp32")
    need(t.log_every >= 0 and t.ckpt_every >= 0, "log_every and ckpt_every must be >= 0")
    need(t.init_from is None or t.method == "mae",
         f"train.init_from={t.init_from!r} is for method=mae (an MAE continued from a trained one); an i-MAE "
         "starts from its teacher (imae.init=teacher)")
    if t.method == "imae":
        uses_teacher = i.init == "teacher" or i.w_distill_sub > 0 or i.w_distill_dom > 0
        need(not uses_teacher or bool(i.teacher),
             "method=imae needs a trained MAE as teacher: pass --teacher RUN_DIR_OR_CHECKPOINT "
             "(or teacher=... in Python); train one first with `python -m imae pretrain --method mae`")


def derived(cfg: RunConfig, world_size: int = 1) -> dict:
    """Values computed from the config once, logged with the run."""
    eff = cfg.train.batch_size * cfg.train.accum_iter
    return {"eff_batch_size": eff, "lr": cfg.train.blr * eff / 256, "world_size": world_size,
            "num_patches": (cfg.model.img_size // cfg.model.patch_size) ** 2}


# The fields every fingerprint has always hashed. A field added later counts only when it differs from its
# default, so adding a config field never renames (and so never retrains) the runs already cached.
_HASHED_SINCE_FIRST = {
    "model": {"decoder_depth", "decoder_embed_dim", "decoder_num_heads", "depth", "embed_dim", "img_size",
              "in_chans", "mlp_ratio", "norm_pix_loss", "num_heads", "patch_size"},
    "data": {"crop_scale", "dataset", "hflip", "loader", "same_prob", "subset_per_class"},
    "imae": {"alpha", "alpha_mode", "alpha_range", "init", "teacher", "teacher_input", "w_distill_dom",
             "w_distill_sub", "w_rec_dom", "w_rec_sub"},
    "train": {"accum_iter", "batch_size", "betas", "blr", "epochs", "mask_ratio", "method", "min_lr", "seed",
              "warmup_epochs", "weight_decay"},
}


def fingerprint(cfg: RunConfig, teacher_fingerprint: str | None = None) -> str:
    """A short hash of everything that changes what a run computes (not where or how fast).

    ``teacher_fingerprint`` identifies the run an i-MAE distils from, or the run an MAE starts from
    (``train.init_from``): the weights count by what they are, not where they lie. A field added after the
    first release (not in ``_HASHED_SINCE_FIRST``) counts only when it differs from its default, so caches
    survive new fields (``train.init_from`` is the first such field)."""
    d = cfg.to_dict()
    for key in _OPERATIONAL:
        sec, name = key.split(".")
        d[sec].pop(name, None)
    for sec, fields in _HASHED_SINCE_FIRST.items():
        if sec not in d:
            continue
        defaults = _field_defaults(sec)
        for name in [n for n in d[sec] if n not in fields]:
            if name in defaults and d[sec][name] == defaults[name]:
                del d[sec][name]
    init_from = d["train"].pop("init_from", None)
    if init_from is not None:
        d["train"]["init_from"] = teacher_fingerprint or init_from
    if cfg.method == "mae":
        d.pop("imae")
    else:  # the teacher counts by what it is, not where it lies
        d["imae"]["teacher"] = teacher_fingerprint or d["imae"]["teacher"]
    blob = json.dumps(d, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:10]



def _field_defaults(section: str) -> dict:
    """{field: default} of one config section, JSON-shaped as :meth:`RunConfig.to_dict` writes it."""
    cls = {"model": ModelConfig, "data": DataConfig, "imae": IMAEConfig, "train": TrainConfig}[section]
    return json.loads(json.dumps(dataclasses.asdict(cls())))
