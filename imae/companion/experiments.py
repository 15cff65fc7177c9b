"""What the experiment notebooks call to get trained runs and their evaluations, cached; and provenance records.

Runs are cached by configuration: ``cached_run("tiny", "mae")`` trains into ``runs/tiny-mae-<fingerprint>``
once and afterwards returns that directory at once, so rerunning one figure never retrains what exists.
Evaluations are cached the same way (:func:`cached_evaluation`), as JSON inside the run directory, keyed by
their options. The names say "cached" because the functions underneath always compute:
:func:`imae.train.pretrain` trains and :func:`imae.metrics.evaluate` evaluates, every time they are called.

Elsewhere: the notebooks' parameter checks are :mod:`imae.parameters`, the shaping of results for figures is
:mod:`imae.companion.plotdata`, the device description is :func:`imae.devices.describe_device`, and where the runs live
is :func:`imae.runs.runs_root`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from ..checkpoint import checkpoint_path, load_checkpoint, teacher_fingerprint
from ..config import RunConfig, build_config, fingerprint
from ..devices import describe_device
from ..errors import ImaeError
from ..metrics.features import use_feature_cache
from ..design import ABLATIONS  # noqa: F401 (the notebooks' ex.ABLATIONS)
from ..runs import load_result, read_run_config, runs_root


def standard_runs(preset: str, *, dataset=None, data_root=None, mae_epochs=None, imae_epochs=None,
                  same_prob: float = 1.0, overrides: dict | None = None, runs_dir=None, device="auto") -> dict:
    """The MAE teacher and the i-MAE trained on it, as every chapter uses them: {"mae": dir, "imae": dir}."""
    mae = cached_run(preset, "mae", runs_dir=runs_dir,
                     **_merge(overrides, {"dataset": dataset, "data.root": data_root, "train.device": device,
                                          "train.epochs": mae_epochs}))
    imae = cached_run(preset, "imae", runs_dir=runs_dir, teacher=mae,
                      **_merge(overrides, {"dataset": dataset, "data.root": data_root, "train.device": device,
                                           "train.epochs": imae_epochs, "data.same_prob": same_prob}))
    return {"mae": mae, "imae": imae}


def comparison_runs(preset: str, seeds=(0,), *, dataset=None, data_root=None, mae_epochs=None, imae_epochs=None,
                    same_prob: float = 1.0, overrides: dict | None = None, runs_dir=None, device="auto",
                    equal_compute: bool = True) -> dict:
    """The main comparison, once per training seed: {seed: {"mae": dir, "imae": dir, "mae_continued": dir}}.

    ``mae_continued`` is the equal-compute control: the i-MAE's teacher trained further as a plain MAE for
    the i-MAE's epochs on the i-MAE's schedule (same blr, warmup and epochs), so a gain of the i-MAE over
    its teacher can be told from the gain of simply training longer.
    """
    out = {}
    for seed in seeds:
        ov = {**(overrides or {}), "train.seed": int(seed)}
        runs = standard_runs(preset, dataset=dataset, data_root=data_root, mae_epochs=mae_epochs,
                             imae_epochs=imae_epochs, same_prob=same_prob, overrides=ov, runs_dir=runs_dir,
                             device=device)
        if equal_compute:
            t = run_config(runs["imae"]).train
            runs["mae_continued"] = cached_run(
                preset, "mae", runs_dir=runs_dir,
                **_merge(overrides, {"dataset": dataset, "data.root": data_root, "train.device": device,
                                     "train.seed": int(seed), "train.init_from": str(runs["mae"]),
                                     "train.epochs": t.epochs, "train.warmup_epochs": t.warmup_epochs,
                                     "train.blr": t.blr, "train.batch_size": t.batch_size,
                                     "train.accum_iter": t.accum_iter, "train.min_lr": t.min_lr}))
        out[int(seed)] = runs
    return out


def _merge(overrides: dict | None, explicit: dict) -> dict:
    """``overrides`` updated by the explicit notebook parameters that are set (None leaves the override)."""
    return {**(overrides or {}), **{k: v for k, v in explicit.items() if v is not None}}


def config_for(preset: str, method: str, *, teacher: str | os.PathLike | None = None, **overrides) -> RunConfig:
    """The configuration :func:`cached_run` trains: ``preset`` with ``overrides``, ``teacher`` as the i-MAE's."""
    if teacher is not None:
        overrides["imae.teacher"] = str(teacher)
    return build_config(preset, method=method, **overrides)


def run_dir_for(cfg: RunConfig, runs_dir=None) -> Path:
    """Where ``cfg`` trains: ``<runs>/<preset>-<method>-<fingerprint>``."""
    tfp = None
    source = cfg.imae.teacher if cfg.method == "imae" else cfg.train.init_from
    if source:
        path = checkpoint_path(source)
        tfp = teacher_fingerprint(load_checkpoint(path), path)
    return runs_root(runs_dir) / f"{cfg.preset}-{cfg.method}-{fingerprint(cfg, tfp)}"


def cached_run(preset: str, method: str, *, runs_dir=None, teacher=None, progress: bool = True,
               **overrides) -> Path:
    """Train a run, or reuse the one this configuration already trained (or resume it), or restore the copy the
    repository ships (:mod:`imae.shipped`; ``IMAE_RETRAIN=1`` trains instead); returns its directory.

    Args:
        preset: config preset.
        method: ``mae`` or ``imae``.
        runs_dir: cache folder (see :func:`imae.runs.runs_root`).
        teacher: i-MAE's MAE teacher (run directory).
        **overrides: config overrides, as :func:`imae.config.build_config`.
    """
    from .. import shipped
    from ..train import pretrain

    cfg = config_for(preset, method, teacher=teacher, **overrides)
    run_dir = run_dir_for(cfg, runs_dir)
    card = None if shipped.retrain() else shipped.card_for(run_dir.name)
    if card is not None and not (run_dir / "checkpoint.pt").is_file():
        shipped.restore(card, run_dir, cfg)  # the repository ships this run: restored, not trained
    return pretrain(cfg, run_dir, progress=progress)


def _options_key(options: dict) -> str:
    blob = json.dumps(options, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def cached_evaluation(run_dir: str | os.PathLike, what: str, **options) -> dict:
    """Evaluate a trained run once (:func:`imae.metrics.evaluate`); later calls with the same options read
    the stored JSON.

    The result folder is ``<run>/eval/<what>-<options hash>/`` (``<what>.json``, ``config.yaml`` and, for
    reconstructions, the example images, returned under ``examples`` as {alpha: {name: array}}; the per-item
    arrays, returned under ``items`` as {name: array}). The key includes :func:`imae.metrics.code_version`,
    so a change to the metric, data or model code re-runs the evaluation. Pooled features are kept in
    ``<runs>/.features`` (keyed by the weights' and images' content, see
    :class:`imae.metrics.features.FeatureCache`), so the metrics of one model encode its images once.
    A fine-tune the repository ships (:func:`imae.shipped.finetune_for`) is restored, not trained, unless
    ``IMAE_RETRAIN`` is set; its key differs from a trained one's.
    """
    from .. import __version__, metrics, shipped
    from ..data.datasets import data_root as resolve_root

    run_dir = Path(run_dir)
    if what == shipped.FINETUNE and "restore_from" not in options and not shipped.retrain():
        stored = shipped.finetune_for(run_dir.name, options)
        if stored is not None:  # the repository ships this fine-tune: its classifier is scored, not trained
            options = {**options, "restore_from": str(stored)}
    saved = read_run_config(run_dir)
    root = options.get("data_root") or saved.get("config", {}).get("data", {}).get("root")
    key = {"fp": saved.get("fingerprint", "unknown"), "version": __version__, "code": metrics.code_version(),
           "data_root": str(resolve_root(root).resolve()), **options}
    folder = run_dir / "eval" / f"{what}-{_options_key(key)}"
    result_file = folder / f"{what}.json"
    if not result_file.is_file():
        # Features extracted for one metric serve the others, across notebooks too: <runs>/.features.
        with use_feature_cache(run_dir.resolve().parent / ".features"):
            metrics.evaluate(run_dir, what, out=folder, **options)
    return load_result(result_file)


def train_variants(preset: str, teacher, variants: dict, *, dataset=None, data_root=None, epochs=None,
                   overrides: dict | None = None, runs_dir=None, device="auto", same_prob: float = 1.0) -> dict:
    """One i-MAE per variant, all from the same MAE ``teacher``: {name: run dir}."""
    common = _merge(overrides, {"dataset": dataset, "data.root": data_root, "train.device": device,
                                "data.same_prob": same_prob, "train.epochs": epochs})
    return {name: cached_run(preset, "imae", runs_dir=runs_dir, teacher=teacher, **{**common, **change})
            for name, change in variants.items()}


def seeded_variants(preset: str, teachers, seeds, variants: dict, *, dataset=None, data_root=None, epochs=None,
                    overrides: dict | None = None, runs_dir=None, device="auto", same_prob: float = 1.0) -> dict:
    """One i-MAE per variant and training seed, seed ``seeds[k]`` trained from its own MAE ``teachers[k]``
    (the main comparison's teachers), so every variant pairs seed by seed with the main arms:
    {name: [run dir per seed]}. A variant equal to the standard i-MAE is the main run itself (same
    configuration, same cache entry)."""
    if len(teachers) != len(seeds):
        raise ValueError(f"{len(teachers)} teachers for {len(seeds)} seeds; give one teacher per seed")
    out: dict[str, list[Path]] = {name: [] for name in variants}
    for teacher, seed in zip(teachers, seeds):
        runs = train_variants(preset, teacher, variants, dataset=dataset, data_root=data_root, epochs=epochs,
                              overrides={**(overrides or {}), "train.seed": int(seed)}, runs_dir=runs_dir,
                              device=device, same_prob=same_prob)
        for name, run in runs.items():
            out[name].append(run)
    return out


def reconstruction_sweep(run_dir: str | os.PathLike, *, alphas=None, n_examples: int = 2, dataset=None,
                         data_root=None, max_images=None, seed: int = 0, device="auto") -> dict:
    """Example images across the alpha sweep (default 0, 0.05, ..., 0.5) for the model of ``run_dir`` (an
    i-MAE with its teacher's single reconstruction beside it): {alpha: examples}, for
    :func:`imae.companion.plotdata.reconstruction_rows` (as ``{"examples": {alpha: examples}}``). Seconds on a CPU;
    not cached."""
    from ..metrics.features import load_eval_data
    from ..metrics.loading import load_model, load_reference, resolve_device
    from ..metrics.reconstruction import SWEEP_ALPHAS, alpha_sweep

    dev = resolve_device(device)
    model = load_model(run_dir, device=dev)
    ref = load_reference(model, None, device=dev) if model.kind == "imae" else None
    data = load_eval_data(model.config, dataset=dataset, data_root=data_root, max_images=max_images)
    return alpha_sweep(model, ref, data, alphas=SWEEP_ALPHAS if alphas is None else alphas, n_examples=n_examples,
                       seed=seed, device=dev)


def run_config(run_dir: str | os.PathLike) -> RunConfig:
    """The configuration a run directory was trained with."""
    return RunConfig.from_dict(read_run_config(run_dir)["config"])


def describe_run(run_dir: str | os.PathLike) -> dict:
    """Preset, dataset, size, epochs and wall time of a finished run, for status tables."""
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    cfg = RunConfig.from_dict(saved["config"])
    ckpt = load_checkpoint(run_dir)
    if not ckpt.get("finished"):
        raise ImaeError(f"{run_dir} is not finished (step {ckpt.get('step')}); rerun its notebook to complete it")
    subset = cfg.data.subset_per_class
    control = "untrained" if ckpt.get("untrained") else "pixels" if ckpt.get("pixels") else None
    method = control or ("mae (continued)" if cfg.train.init_from else cfg.method)
    return {"run": run_dir.name, "method": method, "preset": cfg.preset, "dataset": cfg.data.dataset,
            "train_images": f"first {subset}/class" if subset else "all",
            "epochs": 0 if control else cfg.train.epochs, "seed": cfg.train.seed,
            "batch_size": cfg.train.batch_size, "wall_time_s": round(float(ckpt.get("elapsed_s", 0.0)), 1),
            "hardware": ckpt.get("hardware", "unknown"),
            "fingerprint": saved.get("fingerprint")}


def provenance(notebook: str, runs: dict[str, str | os.PathLike], **extra) -> dict:
    """The record a notebook writes next to its results: which runs (each once), trained on what, when;
    ``hardware`` is where this notebook's evaluations ran."""
    unique = {}
    for name, run in runs.items():
        if Path(run).resolve() not in {Path(r).resolve() for r in unique.values()}:
            unique[name] = run
    return {"notebook": notebook, "hardware": describe_device(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "runs": {k: describe_run(v) for k, v in unique.items()}, **extra}

