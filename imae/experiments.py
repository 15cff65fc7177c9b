"""What the experiment notebooks call: cached training and evaluation, and provenance records.

Runs are cached by configuration: ``train("tiny", "mae")`` trains into ``runs/tiny-mae-<fingerprint>`` once
and afterwards returns that directory at once, so rerunning one figure never retrains what exists.
Evaluations are cached the same way, as JSON inside the run directory, keyed by their options.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from typing import Optional

from .checkpoint import load_checkpoint
from .config import RunConfig, _coerce, build_config, fingerprint
from .errors import ConfigError, ImaeError
from .runs import read_run_config

# Types of the experiment notebooks' parameters (one table for all notebooks; papermill injects strings
# as typed, so a hand-typed `-p mae_epochs ten` must be caught here, before anything trains).
PARAMETER_TYPES = {
    "preset": str, "dataset": Optional[str], "data_root": Optional[str], "runs_dir": Optional[str],
    "results_dir": Optional[str], "device": str, "mae_epochs": Optional[int], "imae_epochs": Optional[int],
    "same_prob": float, "overrides": dict, "alphas": list, "n_pairs": Optional[int], "n_train": Optional[int],
    "n_test": Optional[int], "finetune_epochs": int, "same_probs": list, "seed": int, "mask_ratio": float,
    "n_examples": int, "ablation_epochs": Optional[int],
}


def runs_root(runs_dir: str | os.PathLike | None = None) -> Path:
    """``runs_dir``, else ``$IMAE_RUNS``, else ``./runs``."""
    return Path(runs_dir or os.environ.get("IMAE_RUNS", "runs"))


def check_parameters(**params) -> dict:
    """Type-check notebook parameters by name (see ``PARAMETER_TYPES``); returns them unchanged."""
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
            _coerce(name, value, hint)
    return params


def standard_runs(preset: str, *, dataset=None, data_root=None, mae_epochs=None, imae_epochs=None,
                  same_prob: float = 1.0, overrides: dict | None = None, runs_dir=None, device="auto") -> dict:
    """The MAE teacher and the i-MAE trained on it, as every chapter uses them: {"mae": dir, "imae": dir}."""
    common = {"dataset": dataset, "data.root": data_root, "train.device": device, **(overrides or {})}
    mae = train(preset, "mae", runs_dir=runs_dir, **{**common, "train.epochs": mae_epochs})
    imae = train(preset, "imae", runs_dir=runs_dir, teacher=mae,
                 **{**common, "train.epochs": imae_epochs, "data.same_prob": same_prob})
    return {"mae": mae, "imae": imae}


def config_for(preset: str, method: str, *, teacher: str | os.PathLike | None = None, **overrides) -> RunConfig:
    if teacher is not None:
        overrides["imae.teacher"] = str(teacher)
    return build_config(preset, method=method, **overrides)


def run_dir_for(cfg: RunConfig, runs_dir=None) -> Path:
    """Where ``cfg`` trains: ``<runs>/<preset>-<method>-<fingerprint>``."""
    tfp = None
    if cfg.method == "imae" and cfg.imae.teacher:
        teacher = Path(cfg.imae.teacher)
        teacher_dir = teacher if teacher.is_dir() else teacher.parent
        if (teacher_dir / "config.yaml").is_file():
            tfp = read_run_config(teacher_dir).get("fingerprint")
    return runs_root(runs_dir) / f"{cfg.preset}-{cfg.method}-{fingerprint(cfg, tfp)}"


def train(preset: str, method: str, *, runs_dir=None, teacher=None, progress: bool = True, **overrides) -> Path:
    """Train (or reuse) a run; returns its directory.

    Args:
        preset: config preset.
        method: ``mae`` or ``imae``.
        runs_dir: cache folder (see :func:`runs_root`).
        teacher: i-MAE's MAE teacher (run directory).
        **overrides: config overrides, as :func:`imae.config.build_config`.
    """
    from .train import pretrain

    cfg = config_for(preset, method, teacher=teacher, **overrides)
    return pretrain(cfg, run_dir_for(cfg, runs_dir), progress=progress)


def _options_key(options: dict) -> str:
    blob = json.dumps(options, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def evaluate(run_dir: str | os.PathLike, what: str, **options) -> dict:
    """Run an evaluation of a trained run once; later calls with the same options read the cached JSON."""
    from . import metrics

    run_dir = Path(run_dir)
    fp = read_run_config(run_dir).get("fingerprint", "unknown")
    cache = run_dir / "eval" / f"{what}-{_options_key({'fp': fp, **options})}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    result = metrics.evaluate(run_dir, what, out=cache.parent / cache.stem, **options)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float))
    os.replace(tmp, cache)
    return result


def hardware() -> str:
    """A short description of the device this process computes on."""
    if torch.cuda.is_available():
        return f"1x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    return f"CPU ({os.cpu_count()} cores, {cpu}, {torch.get_num_threads()} threads)"


def describe_run(run_dir: str | os.PathLike) -> dict:
    """Preset, dataset, size, epochs and wall time of a finished run, for status tables."""
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    cfg = RunConfig.from_dict(saved["config"])
    ckpt = load_checkpoint(run_dir)
    if not ckpt.get("finished"):
        raise ImaeError(f"{run_dir} is not finished (step {ckpt.get('step')}); rerun its notebook to complete it")
    subset = cfg.data.subset_per_class
    return {"run": run_dir.name, "method": cfg.method, "preset": cfg.preset, "dataset": cfg.data.dataset,
            "train_images": f"first {subset}/class" if subset else "all", "epochs": cfg.train.epochs,
            "batch_size": cfg.train.batch_size, "wall_time_s": round(float(ckpt.get("elapsed_s", 0.0)), 1),
            "fingerprint": saved.get("fingerprint")}


def loss_summary(run_dir: str | os.PathLike) -> "pd.DataFrame":
    """Mean of every logged loss term over the first and the last epoch of a run."""
    import pandas as pd

    from .runs import read_metrics

    df = pd.DataFrame.from_records([r for r in read_metrics(run_dir) if "event" not in r])
    epoch = (df["epoch"] - 1e-9).clip(lower=0).astype(int)  # the step ending epoch e counts in epoch e
    first, last = df[epoch == epoch.min()], df[epoch == epoch.max()]
    terms = [c for c in df.columns if c.startswith("loss")]
    out = pd.DataFrame({"first epoch": first[terms].mean(), "last epoch": last[terms].mean()})
    out["last / first"] = out["last epoch"] / out["first epoch"]
    return out


def provenance(notebook: str, runs: dict[str, str | os.PathLike], **extra) -> dict:
    """The record a notebook writes next to its results: which runs, on what, when."""
    return {"notebook": notebook, "hardware": hardware(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "runs": {k: describe_run(v) for k, v in runs.items()}, **extra}


def write_json(path: str | os.PathLike, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)
    return path
