"""One entry point for every evaluation: ``evaluate(checkpoint, what, out=..., **options) -> dict``.

``what`` is a registered evaluation (:mod:`imae.evaluations`; :func:`whats` lists them). The model comes from a run directory or checkpoint, the images from its
config's dataset and data root (overridable). With ``out``, the result is written to ``out/<what>.json``
(numbers + metadata: checkpoint, fingerprint, dataset, alphas, seed, device, wall time, code version;
example images of the reconstruction go to ``out/reconstruction_examples.npz``, the per-item arrays of
``result["items"]`` — which test items were right, per-pair errors, ... for bootstrap intervals — to
``out/<what>_items.npz``, named in the JSON as ``items_file``) and the options and the model's config to
``out/config.yaml``, which collects every evaluation of ONE model (a folder of another model is refused).

Per-item arrays of every evaluation (``items``; A alphas, P test pairs, N test images):

* ``linear-probe``, ``knn``: ``{pool}/correct`` (N,) bool and ``test_index`` (N,) int64;
* ``finetune``: ``{pool}/correct`` (N,) bool (after the last epoch) and ``test_index`` (N,) int64;
* ``semantics``, ``separability``, ``reconstruction``: see their modules (``pairs_a``, ``pairs_b`` (P,)
  int64 name the test pairs).
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import yaml

from .. import __version__
from ..errors import ConfigError, RunDirError
from ..runs import atomic_write_npz, atomic_write_text
from .features import PAIRINGS, check_alphas, load_eval_data
from .. import evaluations as registry
from .loading import LoadedModel, load_model, load_reference, resolve_device
from .sourcehash import code_version


def whats() -> tuple[str, ...]:
    """The registered evaluations (:mod:`imae.evaluations`), read at call time."""
    return registry.names()


WHATS = whats()  # the built-in ones, for imports that want a constant; the registry is what decides
_DATA_OPTIONS = ("dataset", "data_root", "max_images")
_INTERNAL = {"model", "reference", "data", "device", "encoder", "baseline", "features"}


def options_for(what: str) -> list[str]:
    """The keyword options ``evaluate(..., what=what)`` accepts (besides out, reference, device)."""
    sig = inspect.signature(registry.get(what).load())
    own = [n for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY and n not in _INTERNAL]
    return sorted({*own, *_DATA_OPTIONS, "model_config", "seed"})  # seed: recorded even where nothing is random


def check_what(what: str) -> str:
    return registry.get(what).name


def _defaults(what: str) -> dict:
    sig = inspect.signature(registry.get(what).load())
    return {n: p.default for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY and n not in _INTERNAL}


def resolved_options(what: str, options: dict) -> tuple[dict, dict]:
    """(the keyword arguments the evaluation's function gets: its defaults updated by ``options``; the data
    options ``dataset``, ``data_root``, ``max_images``) for ``evaluate(..., what, **options)``."""
    kwargs = {**_defaults(what), **{k: v for k, v in options.items()
                                    if k not in (*_DATA_OPTIONS, "model_config", "device", "reference",
                                                 "reference_fingerprint", "out")}}
    if "seed" not in _defaults(what):
        kwargs.pop("seed", None)
    return kwargs, {k: options.get(k) for k in _DATA_OPTIONS}


def evaluate(checkpoint: str | os.PathLike, what: str, *, out: str | os.PathLike | None = None,
             reference: str | os.PathLike | None = None, device: str = "auto",
             reference_fingerprint: str | None = None, **options) -> dict:
    """Run one evaluation of a trained MAE / i-MAE.

    Args:
        checkpoint: run directory or checkpoint file (a bare/official MAE state dict needs ``model_config``).
        what: one of ``separability``, ``semantics``, ``linear-probe``, ``knn``, ``finetune``, ``reconstruction``.
        out: folder for ``<what>.json`` and ``config.yaml`` (None: return only).
        reference: the reference encoder for separability and the MAE baseline of reconstruction (default:
            an i-MAE's teacher, verified against the fingerprint its training recorded; an MAE itself); other
            evaluations ignore it.
        device: ``auto`` (CUDA when visible), ``cpu`` or ``cuda``.
        reference_fingerprint: pin the reference: evaluating several models against one reference, pass its
            fingerprint and a reference that differs is refused (see
            :func:`~imae.metrics.loading.load_reference`).
        **options: ``dataset``, ``data_root``, ``max_images`` (images per split, balanced over classes; a
            fine-tune trains on the whole train split and only its test split is capped),
            ``model_config``, and the keyword arguments of the evaluation's function (see
            :func:`options_for`), e.g. ``alphas``, ``n_pairs``, ``batch_size``, ``seed``, ``epochs``.
    Returns:
        the metric's dict plus ``what`` and ``metadata``; ``items`` holds per-item numpy arrays (written to
        ``<what>_items.npz``, not to the JSON).
    """
    ev = registry.get(what)
    allowed = options_for(what)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        hints = {u: difflib.get_close_matches(u, allowed, n=1) for u in unknown}
        detail = ", ".join(f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items())
        raise ConfigError(f"evaluation {what!r} does not take option(s) {detail}; it takes {allowed}")
    # Cheap checks first: a typo should not cost a model load.
    if "alphas" in options:
        options["alphas"] = check_alphas(options["alphas"])
    if "pairing" in options and options["pairing"] not in PAIRINGS:
        raise ConfigError(f"pairing={options['pairing']!r} is unknown; choose one of {list(PAIRINGS)}")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    model = load_model(checkpoint, model_config=options.get("model_config"), device=dev)
    # max_images sizes the frozen-feature evaluations; a fine-tune trains on the whole train split and is
    # scored on the same capped test images as the probe it is compared with.
    data = load_eval_data(model.config, **{k: options.get(k) for k in _DATA_OPTIONS}, cap_train=not ev.trains)
    kwargs, _ = resolved_options(what, options)
    seed = options.get("seed", kwargs.get("seed", 0))
    ref = None
    if ev.uses_reference(model.kind):
        ref = load_reference(model, reference, device=dev, expect_fingerprint=reference_fingerprint)
    fn = ev.load()
    if ev.input == "model+reference":
        result = fn(model, ref, data, device=dev, **kwargs)
    elif ev.input == "model":
        result = fn(model, data, device=dev, **kwargs)
    else:  # an evaluation of the encoder on clean images
        result = fn(model.mae, data, device=dev, **kwargs)
        if not ev.trains:  # {pool: classifier result} -> one result with per-item arrays
            items = {f"{p}/correct": np.asarray(r.pop("correct"), dtype=bool) for p, r in result.items()}
            items["test_index"] = np.arange(len(data.test), dtype=np.int64)
            result = {"pools": list(result), "accuracy": {p: r["accuracy"] for p, r in result.items()},
                      "chance": 1.0 / data.train.num_classes, "per_pool": result, "items": items}
    wall = time.perf_counter() - t0
    result = {"what": what, **result,
              "metadata": _metadata(model, ref, data, what, {**kwargs, "seed": seed}, dev, wall, checkpoint)}
    if out is not None:
        write_result(out, result, model=model, options=kwargs, data_options={k: options.get(k) for k in _DATA_OPTIONS})
    return result


def _metadata(model: LoadedModel, ref, data, what, kwargs, dev, wall, checkpoint) -> dict:
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    return {"checkpoint": str(checkpoint), "checkpoint_file": str(model.path), "kind": model.kind,
            "fingerprint": model.fingerprint, "reference": ref.describe() if ref is not None else None,
            "dataset": data.dataset, "data_root": data.root, "n_train_images": len(data.train),
            "n_test_images": len(data.test), "alphas": kwargs.get("alphas"), "seed": kwargs.get("seed"),
            "device": str(dev), "device_name": device_name, "torch_threads": torch.get_num_threads(),
            "wall_time_s": round(wall, 3), "imae_version": __version__, "code_version": code_version(),
            "torch_version": torch.__version__,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# ------------------------------------------------------------------------------------------------ files
def _plain(x):
    """JSON-ready: tuples -> lists, numpy/torch scalars -> floats, non-finite floats -> None."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.generic, torch.Tensor)) and np.ndim(x) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "__dataclass_fields__"):
        return _plain(dict(vars(x)))
    return x


def write_result(out: str | os.PathLike, result: dict, *, model: LoadedModel, options: dict,
                 data_options: dict) -> Path:
    """Write ``out/<what>.json`` (+ example images, + per-item arrays) and merge this evaluation into
    ``out/config.yaml``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    what = result["what"]
    cfg_path = out / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else None
    if cfg and cfg.get("model", {}).get("fingerprint") != model.fingerprint:
        raise RunDirError(f"{out} holds evaluations of another model (fingerprint "
                          f"{cfg.get('model', {}).get('fingerprint')}, now {model.fingerprint}). Fix: choose "
                          f"another --out folder for {model.path}")
    body = dict(result)
    examples = body.pop("examples", None)
    if examples:
        npz = out / f"{what}_examples.npz"
        atomic_write_npz(npz, {f"alpha{a}/{k}": v for a, ex in examples.items() for k, v in ex.items()})
        body["examples_file"] = npz.name
    classifier = body.pop("classifier", None)
    if classifier:  # a fine-tune's trained weights (imae.metrics.finetune.CLASSIFIER_FILE)
        from safetensors.torch import save_file

        from .finetune import CLASSIFIER_FILE
        tmp = out / f".{CLASSIFIER_FILE}.tmp"
        save_file({k: v.float().contiguous() for k, v in classifier.items()}, str(tmp))
        os.replace(tmp, out / CLASSIFIER_FILE)
        body["classifier_file"] = CLASSIFIER_FILE
    items = body.pop("items", None)
    if items:
        atomic_write_npz(out / f"{what}_items.npz", {str(k): _array(v) for k, v in items.items()})
        body["items_file"] = f"{what}_items.npz"
    atomic_write_text(out / f"{what}.json", json.dumps(_plain(body), indent=1) + "\n")
    cfg = cfg or {"model": {"checkpoint": str(model.path), "kind": model.kind, "fingerprint": model.fingerprint,
                            "teacher": model.teacher_path, "config": model.config.to_dict()}, "evaluations": {}}
    cfg.setdefault("evaluations", {})[what] = _plain({
        "options": {k: v for k, v in options.items() if k != "model_config"}, **data_options,
        "reference": result["metadata"]["reference"], "device": result["metadata"]["device"]})
    atomic_write_text(cfg_path, yaml.safe_dump(_plain(cfg), sort_keys=False))
    return out / f"{what}.json"


def _array(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


