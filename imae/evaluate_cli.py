"""``python -m imae evaluate``: run evaluations of a trained model and write ``DIR/<what>.json``.

Kept apart from :mod:`imae.cli` so the evaluation's options live next to nothing else. The dependency goes
one way: ``cli.py`` (the parent, which owns ``main`` and its exit codes) calls :func:`add_evaluate_parser`,
and this module never imports ``cli``; run it as ``python -m imae evaluate``.

``--checkpoint`` is one of our run directories or checkpoints, or any exported encoder: a timm hub folder
(what ``python -m imae export --to timm`` writes, or anyone's), ``local-dir:PATH``, ``hf-hub:ID`` or
``timm:NAME``. Such an encoder gets the clean-image evaluations, ``linear-probe`` and ``knn``, exactly as the
book scores its models (:func:`evaluate_encoder`: the same feature extraction, classifier and penalty search;
the dataset's images renormalised and resized to what the model's ``pretrained_cfg`` asks). Both print their
recipe first (:func:`recipe`, generated from the metrics' own defaults) and store it in ``DIR/<what>.json``.

    python -m imae export --to timm cifar-mae cifar-mae-timm
    python -m imae evaluate --checkpoint cifar-mae-timm --what linear-probe --out scores
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from . import evaluations
from .errors import ConfigError

# CLI flag -> evaluate() option; each is passed only to the evaluations that take it.
_FLAGS = {"alphas": "alphas", "n_pairs": "n_pairs", "batch_size": "batch_size", "epochs": "epochs", "seed": "seed",
          "pairing": "pairing", "max_images": "max_images", "mask_ratio": "mask_ratio"}


# imae.metrics.features.PAIRINGS, spelled here so that the arguments are checked before torch is imported
# (tests/test_faults.py checks that they agree). The evaluations come from the registry, which is torch-free.
PAIRINGS = ("different", "same", "random")


def _whats(text: str) -> list[str]:
    items = [w.strip() for w in text.split(",") if w.strip()]
    if items == ["all"]:
        return list(evaluations.names())
    if not items:
        raise ConfigError(f"--what is empty; choose from {list(evaluations.names())} (comma-separated) or all")
    return [evaluations.get(w).name for w in items]


def check_arguments(args) -> list[str]:
    """Every value of ``python -m imae evaluate`` checked without torch; returns the evaluations asked for."""
    from .parameters import check_alphas, check_count, check_max_images

    whats = _whats(args.what)
    if args.alphas is not None:
        check_alphas(args.alphas)
    check_max_images(args.max_images, name="--max-images")
    for name in ("n_pairs", "batch_size", "epochs"):
        check_count("--" + name.replace("_", "-"), getattr(args, name))
    if args.mask_ratio is not None and not 0.0 < args.mask_ratio < 1.0:
        raise ConfigError(f"--mask-ratio {args.mask_ratio} must lie strictly between 0 and 1 (e.g. 0.75)")
    if args.pairing is not None and args.pairing not in PAIRINGS:
        raise ConfigError(f"pairing={args.pairing!r} is unknown; choose one of {list(PAIRINGS)}")
    return whats


def cmd_evaluate(args) -> int:
    check_arguments(args)  # before torch is imported: a wrong value costs milliseconds, not seconds
    from .export import is_timm_source
    from .metrics import evaluate, options_for

    whats = _whats(args.what)
    given = {opt: getattr(args, flag) for flag, opt in _FLAGS.items() if getattr(args, flag) is not None}
    if is_timm_source(args.checkpoint):
        return _cmd_evaluate_encoder(args, whats, given)
    common = {k: v for k, v in (("dataset", args.dataset), ("data_root", args.data_root)) if v is not None}
    for opt in given:  # an option no requested evaluation takes is a mistake, not something to drop silently
        if not any(opt in options_for(w) for w in whats):
            flag = "--" + opt.replace("_", "-")
            users = [w for w in _whats("all") if opt in options_for(w)]
            raise ConfigError(f"{flag} does not apply to --what {args.what}; it is used by {', '.join(users)}")
    for what in whats:
        opts = {**common, **{k: v for k, v in given.items() if k in options_for(what)}}
        steps = recipe(what, opts) if what in evaluations.clean_classifiers() else None
        if steps:
            _print_recipe(what, steps)
        result = evaluate(args.checkpoint, what, out=args.out, reference=args.reference, device=args.device, **opts)
        if steps:
            _add_recipe(Path(args.out) / f"{what}.json", steps)
        print(f"{what}: {_summary(result)}  ({result['metadata']['wall_time_s']:.1f} s) -> {args.out}/{what}.json",
              flush=True)
    return 0


def _cmd_evaluate_encoder(args, whats: list[str], given: dict) -> int:
    """``evaluate`` of an exported encoder (a timm folder or hub name): linear-probe and knn only."""
    other = [w for w in whats if w not in evaluations.clean_classifiers()]
    if other:
        raise ConfigError(f"{args.checkpoint} is an exported encoder (timm): it has no decoder or splitter heads, "
                          f"so --what {', '.join(other)} cannot run on it; choose from "
                          f"{list(evaluations.clean_classifiers())} (the mixture metrics need one of our run "
                          "directories or checkpoints)")
    if args.reference:
        raise ConfigError("--reference applies to separability and reconstruction, not to an exported encoder")
    allowed = {"batch_size", "seed", "max_images"}
    wrong = sorted(set(given) - allowed)
    if wrong:
        raise ConfigError(f"{', '.join('--' + w.replace('_', '-') for w in wrong)} do(es) not apply to "
                          f"--what {args.what} on an exported encoder; it takes --batch-size, --seed, --max-images")
    for what in whats:
        result = evaluate_encoder(args.checkpoint, what, out=args.out, dataset=args.dataset or "cifar10",
                                  data_root=args.data_root, device=args.device, echo=True, **given)
        print(f"{what}: {_summary(result)}  ({result['metadata']['wall_time_s']:.1f} s) -> {args.out}/{what}.json",
              flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ recipe
def recipe(what: str, options: dict | None = None, *, input_note: str | None = None) -> list[str]:
    """The steps of a ``linear-probe`` or ``knn`` evaluation with ``options``, as the book runs it: generated
    from :mod:`imae.metrics.probes`' signatures and defaults (so it cannot drift from the code)."""
    from .metrics import probes

    options = options or {}
    lp = inspect.signature(probes.linear_probe).parameters
    lc = inspect.signature(probes.linear_classifier).parameters
    kn = inspect.signature(probes.knn).parameters

    def opt(name, params):
        return options.get(name, params[name].default)

    pools = opt("pools", lp)
    steps = [f"features: the frozen encoder's final-LayerNorm tokens of the clean, un-augmented train and test "
             f"images, normalised with the dataset's mean and std, in batches of {opt('batch_size', lp)}; pools "
             f"{', '.join(pools)} (cls: token 0; mean: the mean of the patch tokens)"]
    if input_note:
        steps.append(f"input: {input_note}")
    if options.get("max_images"):
        steps.append(f"images: at most {options['max_images']} per split, the same number from every class")
    if what == "linear-probe":
        wds = ", ".join(f"{w:g}" for w in opt("weight_decays", lp))
        steps += [f"classifier: multinomial logistic regression (one per pool) on features standardised with the "
                  f"training split's mean and std, fitted full-batch by L-BFGS, at most {opt('max_iter', lp)} "
                  "iterations per fit",
                  f"penalty: the L2 weight decay chosen from [{wds}] on a validation split of "
                  f"{lc['val_fraction'].default:.0%} of the training images (seed {opt('seed', lp)}), walked from "
                  "strong to weak with warm starts, ties to the stronger; then refitted on every training image",
                  "score: top-1 accuracy on the test split"]
    elif what == "knn":
        steps += [f"classifier: weighted kNN (DINO / InstDisc): cosine similarity to the k = {opt('k', kn)} nearest "
                  f"training features, each voting for its class with weight exp(similarity / "
                  f"{opt('temperature', kn)})",
                  "score: top-1 accuracy on the test split"]
    else:
        raise ConfigError(f"no printed recipe for {what!r}; recipes exist for {list(evaluations.clean_classifiers())}")
    return steps


def _print_recipe(what: str, steps: list[str]) -> None:
    print(f"{what} recipe (as the book scores its models):", flush=True)
    for s in steps:
        print(f"  - {s}", flush=True)


def _add_recipe(path: Path, steps: list[str]) -> None:
    """Store the printed recipe in a result JSON that :func:`imae.metrics.evaluate` wrote."""
    from .runs import atomic_write_text

    if path.is_file():
        body = json.loads(path.read_text())
        body["recipe"] = steps
        atomic_write_text(path, json.dumps(body, indent=1) + "\n")


# ------------------------------------------------------------------------------------ exported encoders
def evaluate_encoder(source: str | os.PathLike, what: str = "linear-probe", *, out: str | os.PathLike | None = None,
                     dataset: str = "cifar10", data_root: str | None = None, max_images: int | None = None,
                     batch_size: int | None = None, seed: int | None = None, device: str = "auto",
                     echo: bool = False) -> dict:
    """Score an exported encoder (any timm model: a hub folder, ``local-dir:PATH``, ``hf-hub:ID``,
    ``timm:NAME``) on ``dataset`` as the book scores its models.

    Args:
        source: the encoder (see :func:`imae.export.load_timm_encoder`).
        what: ``linear-probe`` or ``knn``.
        out: folder for ``<what>.json`` (+ per-item arrays and ``config.yaml``, as :func:`imae.metrics.evaluate`
            writes them); None: return only.
        dataset, data_root, max_images: the images (``max_images`` per split, balanced over classes).
        batch_size, seed: as for our models (seed: the probe's validation split).
        device: ``auto`` (CUDA when visible), ``cpu`` or ``cuda``.
        echo: print the recipe before running.
    Returns:
        the result as ``evaluate`` returns it (``accuracy`` per pool, ``per_pool``, ``items``, ``metadata``),
        plus ``recipe``.
    """
    import numpy as np
    import torch

    from . import __version__
    from .config import DataConfig, ModelConfig, RunConfig
    from .data.datasets import dataset_info
    from .export import load_timm_encoder
    from .metrics.evaluate import write_result
    from .metrics.features import encoder_key, load_eval_data
    from .metrics.loading import LoadedModel, resolve_device
    from .metrics.probes import knn, linear_probe

    if what not in evaluations.clean_classifiers():
        raise ConfigError(f"an exported encoder is scored on {list(evaluations.clean_classifiers())}, not {what!r}")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    info = dataset_info(dataset)
    enc = load_timm_encoder(source, dataset=dataset)
    fn = linear_probe if what == "linear-probe" else knn
    defaults = inspect.signature(fn).parameters
    kwargs = {"pools": list(enc.pools), "batch_size": batch_size or defaults["batch_size"].default}
    if what == "linear-probe":
        kwargs["seed"] = 0 if seed is None else seed
    changes = [f"renormalised from the dataset's mean/std to the model's {enc.input['mean']}/{enc.input['std']}"
               if enc.input["renormalised"] else "",
               f"resized from {info.img_size} to {enc.input['size']} px (bicubic, antialiased)"
               if enc.input["resized"] else ""]
    note = (f"{enc.input['size']}×{enc.input['size']} px, mean {enc.input['mean']}, std {enc.input['std']} (the "
            f"model's pretrained_cfg)" + "".join(f"; {c}" for c in changes if c))
    if not enc.encoder.has_class_token:
        note += "; the model has no class token, so only the mean pool is scored"
    steps = recipe(what, {**kwargs, "max_images": max_images}, input_note=note)
    if echo:
        _print_recipe(what, steps)
    cfg = RunConfig(model=ModelConfig(img_size=info.img_size, in_chans=3), data=DataConfig(dataset=dataset,
                                                                                           root=data_root))
    data = load_eval_data(cfg, dataset=dataset, data_root=data_root, max_images=max_images)
    encoder = enc.encoder.to(dev)
    fingerprint = f"timm:{encoder_key(encoder)[:12]}"
    result = fn(encoder, data, device=dev, **kwargs)
    items = {f"{p}/correct": np.asarray(r.pop("correct"), dtype=bool) for p, r in result.items()}
    items["test_index"] = np.arange(len(data.test), dtype=np.int64)
    result = {"pools": list(result), "accuracy": {p: r["accuracy"] for p, r in result.items()},
              "chance": 1.0 / data.train.num_classes, "per_pool": result, "items": items}
    wall = time.perf_counter() - t0
    try:
        import timm

        timm_version = timm.__version__
    except ImportError:  # pragma: no cover - load_timm_encoder needs it
        timm_version = None
    exported = {k: enc.export.get(k) for k in ("source", "origin", "kind", "fingerprint")} if enc.export else None
    result = {"what": what, **result, "recipe": steps, "metadata": {
        "checkpoint": str(source), "source": enc.name, "kind": "timm", "architecture": enc.architecture,
        "fingerprint": fingerprint, "exported_from": exported, "reference": None, "dataset": data.dataset,
        "data_root": data.root, "n_train_images": len(data.train), "n_test_images": len(data.test),
        "input": enc.input, "seed": kwargs.get("seed"), "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(), "wall_time_s": round(wall, 3), "imae_version": __version__,
        "torch_version": torch.__version__, "timm_version": timm_version,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
    if out is not None:
        model = LoadedModel(encoder, None, cfg, "timm", Path(str(source)), fingerprint, decoder_loaded=False)
        write_result(out, result, model=model, options=kwargs,
                     data_options={"dataset": dataset, "data_root": data_root, "max_images": max_images})
    return result


def _summary(r: dict) -> str:
    what = r["what"]
    if what in ("linear-probe", "knn"):
        return ", ".join(f"{p} {a:.3f}" for p, a in r["accuracy"].items())
    if what == "finetune":
        return f"accuracy {r['accuracy']:.3f} after {r['epochs']} epochs"
    if what == "separability":
        p = r["pools"][0]
        return f"R2 ({p}) sub {_span(r['ridge'][p]['sub']['r2'])}, dom {_span(r['ridge'][p]['dom']['r2'])}"
    if what == "semantics":
        p = r["pools"][0]
        return f"accuracy ({p}) sub {_span(r['accuracy'][p]['sub'])}, dom {_span(r['accuracy'][p]['dom'])}"
    if what == "reconstruction":
        m = r["imae"] or r["mae"]
        return f"PSNR sub {_span(m['sub']['psnr'])}, dom {_span(m['dom']['psnr'])} dB"
    return "done"


def _span(values: list) -> str:
    return f"{values[0]:.3f}..{values[-1]:.3f}" if values else "-"


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``evaluate`` subcommand on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser("evaluate", help="evaluate a trained MAE / i-MAE (LS, DS, probes, reconstruction)")
    p.add_argument("--checkpoint", required=True,
                   help="run directory or checkpoint file, or an exported encoder: a timm folder (python -m imae "
                        "export --to timm), local-dir:PATH, hf-hub:ID or timm:NAME (linear-probe and knn)")
    p.add_argument("--what", required=True, help=" | ".join(evaluations.names()) + "; several comma-separated, or all")
    p.add_argument("--out", required=True, help="results folder (DIR/<what>.json, DIR/config.yaml)")
    p.add_argument("--reference", help="reference MAE for separability/reconstruction (default: the i-MAE's "
                                       "teacher; an MAE is its own)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dataset", help="override the model's dataset (e.g. cifar10-mini; an exported encoder: "
                                     "default cifar10)")
    p.add_argument("--data-root", help="folder holding the dataset folders (default: the model's)")
    p.add_argument("--alphas", nargs="+", type=float, help="subordinate weights in (0, 0.5] (default 0.05..0.5)")
    p.add_argument("--n-pairs", type=int, help="pairs per split (default: one per image)")
    p.add_argument("--max-images", type=int, help="images per split, balanced over classes (CPU runs)")
    p.add_argument("--pairing", help="different (default) | same | random")
    p.add_argument("--mask-ratio", type=float, help="reconstruction (default: the model's training ratio)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int, help="fine-tuning epochs")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_evaluate)
    return p

