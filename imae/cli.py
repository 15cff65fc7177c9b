"""``python -m imae pretrain | evaluate | reproduce | export | make-toy-data``.

User errors (:class:`~imae.errors.ImaeError`) print one ``error: ...`` line and exit 2, without a traceback;
an interrupted run exits 128 + the signal number after writing its checkpoint; a non-finite loss exits 3.
Only the standard library is imported until a subcommand runs, so ``python -m imae --help`` works in an
environment without torch.
"""

from __future__ import annotations

import argparse
import sys

from .errors import ImaeError, NonFiniteLossError, TrainingInterrupted, os_reason, storage_error


def _set_pairs(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ImaeError(f"expected KEY=VALUE (e.g. --set train.warmup_epochs=1), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _choices(names) -> str:
    return " | ".join(names)


def _dataset_help() -> str:
    """The datasets the configuration accepts (:data:`imae.data.DATASETS`; its table needs numpy, which a bare
    install's ``--help`` may lack)."""
    try:
        from .data.datasets import DATASETS
    except ImportError:
        return "a dataset of imae.data.DATASETS (default: the preset's)"
    return _choices(DATASETS) + " (default: the preset's)"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    from .config import PRESETS

    p.add_argument("--preset", default="tiny", help=_choices(PRESETS) + " (smallest first; default tiny)")
    p.add_argument("--dataset", help=_dataset_help())
    p.add_argument("--data-root", help="folder holding the dataset folders (default $IMAE_DATA or ./data)")
    p.add_argument("--subset-per-class", type=int, help="first N images of every class (0: every image)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--accum-iter", type=int)
    p.add_argument("--blr", type=float, help="base learning rate (lr = blr * eff_batch / 256)")
    p.add_argument("--mask-ratio", type=float)
    p.add_argument("--same-prob", type=float, help="P(partner from the same class), i-MAE")
    p.add_argument("--teacher-input", choices=["clean", "mixed"])
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--amp", choices=["auto", "bf16", "off"])
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--nonfinite", choices=["stop", "restart-fp32"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field, e.g. imae.alpha=0.3")


_ARG_KEYS = {"dataset": "data.dataset", "data_root": "data.root", "subset_per_class": "data.subset_per_class",
             "epochs": "train.epochs", "batch_size": "train.batch_size", "accum_iter": "train.accum_iter",
             "blr": "train.blr", "mask_ratio": "train.mask_ratio", "same_prob": "data.same_prob",
             "teacher_input": "imae.teacher_input", "seed": "train.seed", "device": "train.device",
             "amp": "train.amp", "compile": "train.compile", "nonfinite": "train.nonfinite"}


def config_from_args(args, method: str):
    """The run configuration the arguments describe, checked (types, ranges, names) without importing torch;
    a wrong value's message gives the fix as a command-line flag."""
    from .config import build_config
    from .errors import ConfigError

    overrides = {key: getattr(args, a) for a, key in _ARG_KEYS.items() if getattr(args, a, None) is not None}
    if getattr(args, "teacher", None):
        overrides["imae.teacher"] = args.teacher
    overrides.update(_set_pairs(args.set))
    try:
        return build_config(args.preset, method=method, **overrides)
    except ConfigError as e:
        if not hasattr(e, "example"):
            raise
        key = next((k for k in overrides if k == e.parameter or k.split(".")[-1] == e.parameter.split(".")[-1]),
                   e.parameter)
        flag = next((a for a, k in _ARG_KEYS.items() if k == e.parameter and getattr(args, a, None) is not None),
                    None)
        fix = f"--{flag.replace('_', '-')} {e.example}" if flag else f"--set {key}={e.example}"
        raise ConfigError(f"{key} must be {e.expected}, got {e.value!r} ({type(e.value).__name__}). "
                          f"Fix: pass e.g. {fix}") from None


def cmd_pretrain(args) -> int:
    from pathlib import Path

    from .errors import ConfigError

    if args.resume and args.no_resume:
        raise ConfigError("--resume and --no-resume contradict each other; pass one of them")
    out = Path(args.out)
    if args.resume and not (out / "checkpoint.pt" if out.is_dir() else out).is_file():
        raise ConfigError(f"--resume: {args.out} holds no checkpoint to resume from; run the same command without "
                          f"--resume to start this run")
    cfg = config_from_args(args, args.method)  # every argument is checked before torch is imported
    from .train import pretrain

    run_dir = pretrain(cfg, args.out, resume=not args.no_resume, overwrite=args.overwrite,
                       progress=not args.quiet)
    print(run_dir)
    return 0


def cmd_make_toy_data(args) -> int:
    from .data.toy import write_toy_cifar

    folder = write_toy_cifar(args.root, per_class_train=args.train_per_class, per_class_test=args.test_per_class,
                             seed=args.seed)
    print(folder)
    return 0


def cmd_reproduce(args) -> int:
    from .companion.reproduce import reproduce

    extra = _set_pairs(args.param)
    if args.data_root:
        extra["data_root"] = args.data_root
    book = reproduce(args.preset, only=args.only, extra=extra, build=not args.no_build, book_dir=args.out)
    print(book)
    return 0


def cmd_export(args) -> int:
    from .export import export

    record = export(args.run, args.out, to=args.to, dtype=args.dtype, card=not args.no_card)
    files = ", ".join(f for f in (record["weights"], "config.json", "timm_kwargs.json", record.get("card"),
                                  "export.json") if f)
    print(f"{record['kind']} encoder of {args.run} ({record['n_params']:,} parameters, {record['dtype']}) -> "
          f"{args.out}: {files}\n"
          f"load it with timm.create_model(\"local-dir:{args.out}\", pretrained=True)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import METHODS

    parser = argparse.ArgumentParser(prog="python -m imae", description="i-MAE reproduction toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train an MAE (the teacher/baseline) or an i-MAE")
    p.add_argument("--method", required=True, choices=list(METHODS))
    p.add_argument("--out", required=True, help="run directory (config.yaml, metrics.jsonl, checkpoint.pt)")
    p.add_argument("--teacher", help="i-MAE: trained MAE run directory or checkpoint")
    _add_config_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace a run directory of another config")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--resume", action="store_true",
                   help="require a checkpoint in --out and continue from it (without the flag a checkpoint is "
                        "also continued, and a missing one starts the run)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("reproduce", help="run the experiment notebooks into book/ and build the book")
    p.add_argument("--preset", default="tiny", help="preset for every notebook (experiments/params/P.yaml if any)")
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="rerun just these notebooks (e.g. separability)")
    p.add_argument("--data-root", help="dataset root passed to every notebook")
    p.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", help="notebook parameter override")
    p.add_argument("--no-build", action="store_true", help="do not build the book afterwards")
    p.add_argument("--out", metavar="DIR",
                   help="folder for the executed notebooks and their records (default book/; with --only at a "
                        "preset other than the one the book's chapters were rendered with: _build/figures/PRESET, "
                        "so a rerun never replaces a committed chapter; --out book replaces it)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("export", help="write a trained encoder as a timm hub folder (timm.create_model('local-dir:OUT'))")
    p.add_argument("--to", default="timm", choices=["timm"], help="target library (default timm)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16"],
                   help="weights' precision (auto: float32 for a run, a published model's stored float16)")
    p.add_argument("--no-card", action="store_true", help="do not write README.md, the model card")
    p.add_argument("run", metavar="RUN", help="MAE or i-MAE run directory or checkpoint, or a published model "
                                              "(cifar-mae, cifar-imae) or its card .json")
    p.add_argument("out", metavar="OUT", help="folder for config.json, model.safetensors, README.md (the card), "
                                              "timm_kwargs.json, export.json")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("make-toy-data", help="write a small synthetic CIFAR-10-layout dataset (tests, CI)")
    p.add_argument("root", help="data root; writes ROOT/cifar-10-batches-py")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_toy_data)
    from .evaluate_cli import add_evaluate_parser
    add_evaluate_parser(sub)
    from .campaign.cli import add_campaign_parser
    add_campaign_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except ImaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's failures (disk full, read-only, no permission): one line, not a traceback
        if os_reason(e) is None:
            raise
        print(f"error: {storage_error(e, doing=f'{args.command}: accessing')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
