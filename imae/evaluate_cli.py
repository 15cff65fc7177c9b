"""``python -m imae evaluate``: run evaluations of a trained model and write ``DIR/<what>.json``.

Kept apart from :mod:`imae.cli` so the evaluation's options live next to nothing else. The dependency goes
one way: ``cli.py`` (the parent, which owns ``main`` and its exit codes) calls :func:`add_evaluate_parser`,
and this module never imports ``cli``; run it as ``python -m imae evaluate``.
"""

from __future__ import annotations

import argparse

from .errors import ConfigError

# CLI flag -> evaluate() option; each is passed only to the evaluations that take it.
_FLAGS = {"alphas": "alphas", "n_pairs": "n_pairs", "batch_size": "batch_size", "epochs": "epochs", "seed": "seed",
          "pairing": "pairing", "max_images": "max_images", "mask_ratio": "mask_ratio"}


def _whats(text: str) -> list[str]:
    from .metrics import WHATS
    from .metrics.evaluate import check_what

    items = [w.strip() for w in text.split(",") if w.strip()]
    if items == ["all"]:
        return list(WHATS)
    if not items:
        raise ConfigError(f"--what is empty; choose from {list(WHATS)} (comma-separated) or all")
    return [check_what(w) for w in items]


def cmd_evaluate(args) -> int:
    from .metrics import evaluate, options_for

    whats = _whats(args.what)
    given = {opt: getattr(args, flag) for flag, opt in _FLAGS.items() if getattr(args, flag) is not None}
    common = {k: v for k, v in (("dataset", args.dataset), ("data_root", args.data_root)) if v is not None}
    for opt in given:  # an option no requested evaluation takes is a mistake, not something to drop silently
        if not any(opt in options_for(w) for w in whats):
            flag = "--" + opt.replace("_", "-")
            users = [w for w in _whats("all") if opt in options_for(w)]
            raise ConfigError(f"{flag} does not apply to --what {args.what}; it is used by {', '.join(users)}")
    for what in whats:
        opts = {**common, **{k: v for k, v in given.items() if k in options_for(what)}}
        result = evaluate(args.checkpoint, what, out=args.out, reference=args.reference, device=args.device, **opts)
        print(f"{what}: {_summary(result)}  ({result['metadata']['wall_time_s']:.1f} s) -> {args.out}/{what}.json",
              flush=True)
    return 0


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
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    p.add_argument("--what", required=True, help="separability | semantics | linear-probe | knn | finetune | "
                                                 "reconstruction; several comma-separated, or all")
    p.add_argument("--out", required=True, help="results folder (DIR/<what>.json, DIR/config.yaml)")
    p.add_argument("--reference", help="reference MAE for separability/reconstruction (default: the i-MAE's "
                                       "teacher; an MAE is its own)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dataset", help="override the model's dataset (e.g. cifar10-mini)")
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

