"""The experiment notebooks' parameters: their types, and the check every notebook runs before it trains.

papermill injects ``-p`` values as typed (a hand-typed ``-p mae_epochs ten`` arrives as the string
``"ten"``), so a wrong type must be caught here, with a message that names the parameter and the fix, and not
minutes later inside training. One table serves every notebook; each uses the parameters it needs.
"""

from __future__ import annotations

from typing import Mapping, Optional

from .config import coerce
from .errors import ConfigError

PARAMETER_TYPES = {
    "preset": str, "dataset": Optional[str], "data_root": Optional[str], "runs_dir": Optional[str],
    "results_dir": Optional[str], "device": str, "mae_epochs": Optional[int], "imae_epochs": Optional[int],
    "same_prob": float, "overrides": dict, "alphas": list, "n_pairs": Optional[int], "n_train": Optional[int],
    "n_test": Optional[int], "finetune_epochs": int, "same_probs": list, "seed": int, "mask_ratio": Optional[float],
    "n_examples": int, "ablation_epochs": Optional[int], "max_images": Optional[int], "pool": str,
    "seeds": list, "campaign_dir": Optional[str],
}


def check_parameters(**params) -> dict:
    """Type-check notebook parameters by name (see ``PARAMETER_TYPES``); returns them unchanged.

    Raises:
        ConfigError: for a name that is not a notebook parameter (a typo would otherwise be ignored), or a
            value of the wrong type (the message says how to pass it).
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
    return params


def parameters_in(namespace: Mapping) -> dict:
    """The notebook parameters defined in ``namespace`` (a notebook's ``globals()``), checked: {name: value}.

    Only names of ``PARAMETER_TYPES`` are picked, so the notebook's other variables are left alone.
    """
    return check_parameters(**{k: namespace[k] for k in PARAMETER_TYPES if k in namespace})
