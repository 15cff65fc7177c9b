"""The experiment notebooks' parameters: their types and values, and the check every notebook runs before it
trains.

papermill injects ``-p`` values as typed (a hand-typed ``-p mae_epochs ten`` arrives as the string
``"ten"``), so a wrong type must be caught here, with a message that names the parameter and the fix, and not
minutes later inside training. Values are checked here too, with the command line's own checks and messages
(``alphas: [0.7]``, ``max_images: -5``, ``same_prob: 2``, ``seeds: []``, an unknown preset or override), so a
notebook stops in its setup cell, in a second, not after its first model trained. One table serves every
notebook; each uses the parameters it needs. Nothing here imports torch (``imae reproduce`` checks a
preset's parameters before it starts a kernel).
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

from .config import PRESETS, build_config, coerce
from .errors import ConfigError

PARAMETER_TYPES = {
    "preset": str, "dataset": Optional[str], "data_root": Optional[str], "runs_dir": Optional[str],
    "results_dir": Optional[str], "device": str, "mae_epochs": Optional[int], "imae_epochs": Optional[int],
    "same_prob": float, "overrides": dict, "alphas": list, "n_pairs": Optional[int], "n_train": Optional[int],
    "n_test": Optional[int], "finetune_epochs": int, "same_probs": list, "seed": int, "mask_ratio": Optional[float],
    "n_examples": int, "ablation_epochs": Optional[int], "max_images": Optional[int], "pool": str,
    "seeds": list, "campaign_dir": Optional[str], "finetune_recipe": dict,
}

POOLS = ("mean", "cls")
# whole numbers that count something (None, where allowed, means "the preset's" or "all")
_AT_LEAST_ONE = ("mae_epochs", "imae_epochs", "ablation_epochs", "finetune_epochs", "n_pairs", "n_train", "n_test")


def check_alphas(alphas) -> list[float]:
    """Subordinate weights, each in (0, 0.5] (the command line's ``--alphas`` check and message)."""
    try:
        values = [float(a) for a in alphas]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"alphas={alphas!r} must be a list of numbers in (0, 0.5], e.g. 0.1 0.3 0.5") from e
    if not values:
        raise ConfigError("alphas is empty; pass at least one subordinate weight in (0, 0.5], e.g. 0.3")
    for a in values:
        if not 0.0 < a <= 0.5:
            raise ConfigError(f"alpha={a} is outside (0, 0.5]: alpha is the SUBORDINATE image's weight, so the "
                              f"other image gets 1 - alpha >= alpha. Fix: pass values like 0.1 0.3 0.5")
    return values


def check_count(name: str, value, *, minimum: int = 1, what: str = "") -> None:
    """``value`` is None or a whole number >= ``minimum``; else a ConfigError naming ``name``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        meaning = f" ({what})" if what else ""
        raise ConfigError(f"{name}={value!r} must be a whole number >= {minimum}{meaning}"
                          + (", or None" if name in PARAMETER_TYPES and "Optional" in str(PARAMETER_TYPES[name])
                             else ""))


def check_max_images(max_images, num_classes: int | None = None, *, name: str = "max_images") -> None:
    """Images per split, balanced over classes: None (all) or at least one per class."""
    check_count(name, max_images, what="images per split, balanced over the classes")
    if max_images is not None and num_classes and max_images < num_classes:
        raise ConfigError(f"{name}={max_images} is below the number of classes ({num_classes}); pass at least "
                          f"{num_classes} (it is split evenly over the classes), or None for every image")


def _check_device(device: str) -> None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ConfigError(f"device={device!r} is not a device name; use auto, cpu or cuda (or cuda:N)")


def check_parameters(**params) -> dict:
    """Check notebook parameters by name (see ``PARAMETER_TYPES``): types, then values; returns them unchanged.

    Raises:
        ConfigError: for a name that is not a notebook parameter (a typo would otherwise be ignored), a value
            of the wrong type (the message says how to pass it), or a value out of range (the same check and
            message as the command line's).
    """
    for name, value in params.items():
        if name not in PARAMETER_TYPES:
            raise ConfigError(f"unknown notebook parameter {name!r}; known: {sorted(PARAMETER_TYPES)}")
        hint = PARAMETER_TYPES[name]
        if hint in (dict, list):
            if not isinstance(value, hint):
                raise ConfigError(
                    f"notebook parameter {name} must be a {hint.__name__}, got {value!r} ({type(value).__name__}). "
                    f"Fix: pass it with papermill -y '{name}: ...' or in a -f params.yaml file")
        else:
            coerce(name, value, hint)
    check_values(params)
    return params


def check_values(params: Mapping) -> None:
    """The value checks of :func:`check_parameters` (types already checked)."""
    p = params
    if "preset" in p and p["preset"] not in PRESETS:
        raise ConfigError(f"unknown preset {p['preset']!r}; choose one of {sorted(PRESETS)}")
    dataset = p.get("dataset")
    from .data.datasets import DATASETS  # the table only: no torch

    if dataset is not None and dataset not in DATASETS:
        raise ConfigError(f"data.dataset={dataset!r} is unknown; choose one of {sorted(DATASETS)}")
    if "device" in p:
        _check_device(p["device"])
    if "alphas" in p:
        check_alphas(p["alphas"])
    for name in _AT_LEAST_ONE:
        if name in p:
            check_count(name, p[name])
    if "n_examples" in p:
        check_count("n_examples", p["n_examples"], minimum=0, what="example pairs per alpha in the image grid")
    if "mask_ratio" in p and p["mask_ratio"] is not None and not 0.0 < p["mask_ratio"] < 1.0:
        raise ConfigError(f"mask_ratio={p['mask_ratio']} must lie strictly between 0 and 1 (e.g. 0.75), or None "
                          f"for the training ratio")
    if "pool" in p and p["pool"] not in POOLS:
        raise ConfigError(f"pool={p['pool']!r} is unknown; choose one of {list(POOLS)}")
    if "seeds" in p:
        seeds = p["seeds"]
        if not seeds:
            raise ConfigError("seeds is empty; pass at least one training seed, e.g. seeds: [0] (or [0, 1, 2] for "
                              "intervals over seeds)")
        for s in seeds:
            coerce("seeds[]", s, int)
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds={seeds} repeats a seed; each training seed is one independent run")
    if p.get("same_prob") is not None and not 0.0 <= p["same_prob"] <= 1.0:
        raise ConfigError(f"same_prob={float(p['same_prob'])} must lie in [0, 1] (1: same-class pairs)")
    if "same_probs" in p:
        if not p["same_probs"]:
            raise ConfigError("same_probs is empty; pass at least one pair policy in [0, 1], e.g. [0.0, 1.0]")
        for v in p["same_probs"]:
            coerce("same_probs[]", v, float)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"same_prob={float(v)} must lie in [0, 1] (1: same-class pairs)")
    preset = p.get("preset")
    if preset is None:
        if "max_images" in p:
            check_max_images(p["max_images"])
        return
    # The models the notebook will build, built now: same_prob, epochs and every override meet the same
    # checks (and messages) as on the command line, before anything trains.
    common = {k: v for k, v in (("data.dataset", dataset), ("data.same_prob", p.get("same_prob"))) if v is not None}
    overrides = dict(p.get("overrides") or {})
    for method, epochs in (("mae", p.get("mae_epochs")), ("imae", p.get("imae_epochs"))):
        extra = {"imae.teacher": "<the notebook's MAE>"} if method == "imae" else {}
        cfg = build_config(preset, method, **{**overrides, **common, **extra,
                                              **({"train.epochs": epochs} if epochs is not None else {})})
    check_max_images(p.get("max_images"), DATASETS[cfg.data.dataset].num_classes)


def parameters_in(namespace: Mapping) -> dict:
    """The notebook parameters defined in ``namespace`` (a notebook's ``globals()``), checked: {name: value}.

    Only names of ``PARAMETER_TYPES`` are picked, so the notebook's other variables are left alone.
    """
    return check_parameters(**{k: namespace[k] for k in PARAMETER_TYPES if k in namespace})
