"""``python -m imae campaign``: one window of the campaign, or ``--collect`` / ``--list`` of its results.

Kept apart from :mod:`imae.cli`, which only calls :func:`add_campaign_parser`; nothing but the standard
library (and the configuration, which imports no more, for the presets' names) is imported until the command runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys


def _pairs(items, what: str, cast=None) -> dict:
    from ..errors import ConfigError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{what}: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if cast is None:
            import yaml

            v = yaml.safe_load(v)
        else:
            try:
                v = cast(v)
            except ValueError as e:
                raise ConfigError(f"{what}: {item!r} ({e})") from e
        out[k.strip()] = v
    return out


def _eval_options(items) -> dict:
    out: dict = {}
    for key, value in _pairs(items, "--eval-option").items():
        what, opt = key.split(".", 1) if "." in key else ("*", key)
        out.setdefault(what, {})[opt] = value
    return out


def add_campaign_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "campaign", help="one budgeted window of the paper-scale campaign (or --collect its results)",
        description="Run the campaign's next stages within --budget-s seconds and write their results into --out "
                    "(the manifest, the log and one archive per stage); see campaign/README.md.")
    add_window_arguments(p)
    p.add_argument("--collect", metavar="FOLDER", help="import a window's output folder into the repository")
    p.add_argument("--dest", help="with --collect: the preset's campaign folder (default campaign/PRESET)")
    p.add_argument("--list", action="store_true", help="print the stages and their status, then exit")
    p.set_defaults(func=cmd_campaign)
    return p


def add_window_arguments(p: argparse.ArgumentParser) -> None:
    """The options of one window (shared by every command that runs one)."""
    from ..config import PRESETS  # no torch: the parser works without it

    p.add_argument("--preset", default="cifar", help=" | ".join(PRESETS) + " (default cifar)")
    p.add_argument("--budget-s", type=float, default=500.0,
                   help="wall seconds for the whole command, counted from the process start (default 500); under "
                        "a scheduler's time limit, a few minutes less than the job's limit")
    p.add_argument("--out", help="folder the window writes its results into (the manifest, the log, one archive "
                                 "per stage); --collect reads it")
    p.add_argument("--work", help="scratch folder for runs (default runs/campaign-PRESET)")
    p.add_argument("--manifest", help="campaign manifest (default campaign/PRESET/manifest.json)")
    p.add_argument("--weights-dir", help="stored weights of finished stages (default: beside the manifest)")
    p.add_argument("--data-root", help="dataset root (default: the config's, $IMAE_DATA or ./data)")
    p.add_argument("--stages", nargs="+", metavar="STAGE", help="run only these stages (default: all, in order)")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile: auto = only where the planner finds it pays within the budget (CUDA)")
    p.add_argument("--epochs", action="append", metavar="METHOD=N", help="force the epochs of a free stage (mae, imae)")
    p.add_argument("--max-epochs", action="append", metavar="METHOD=N", help="cap the planner's epochs")
    p.add_argument("--min-epochs", type=int, default=1, help="do not start a free stage that fits fewer epochs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every model")
    p.add_argument("--eval-option", action="append", metavar="[WHAT.]KEY=VALUE",
                   help="evaluation option, e.g. max_images=500 or knn.batch_size=512")
    p.add_argument("--reserve-s", type=float, help="the watchdog fires this long before the deadline (default 3%%)")
    p.add_argument("--eval-share", type=float, default=0.3,
                   help="at most this part of the budget is kept for evaluations while planning training")
    p.add_argument("--train-fraction", type=float, default=0.7,
                   help="the first MAE + i-MAE training takes at most this part of the budget")
    p.add_argument("--smoke-steps", type=int, default=8)
    p.add_argument("--smoke-epochs", type=int, default=3)
    p.add_argument("--throughput-args", default="", help="extra arguments for benchmarks/throughput.py")
    p.add_argument("--throughput-estimate-s", type=float, help="time to reserve for the throughput stage")


def cmd_campaign(args) -> int:
    if args.collect:
        from .collect import collect

        with _collect_lock(args):
            result = collect(args.collect, args.dest)
        return 0 if not result["missing"] else 1
    if args.list:
        return _list(args)
    return run_window(config_from_args(args))


def config_from_args(args):
    """The :class:`~imae.campaign.state.CampaignConfig` of the window the arguments describe."""
    import time
    from pathlib import Path

    from ..errors import ConfigError
    from .state import CampaignConfig
    from .watchdog import process_age_s

    if not args.out:
        raise ConfigError("--out is required (the folder the window writes its results into)")
    return CampaignConfig(
        out=Path(args.out), preset=args.preset, budget_s=args.budget_s, work=args.work and Path(args.work),
        manifest=args.manifest and Path(args.manifest), weights_dir=args.weights_dir and Path(args.weights_dir),
        data_root=args.data_root and Path(args.data_root),
        stages=args.stages, device=args.device, compile=args.compile, overrides=_pairs(args.set, "--set"),
        epochs=_pairs(args.epochs, "--epochs", int), max_epochs=_pairs(args.max_epochs, "--max-epochs", int),
        min_epochs=args.min_epochs, eval_extra=_eval_options(args.eval_option), reserve_s=args.reserve_s,
        eval_share=args.eval_share, train_fraction=args.train_fraction, smoke_steps=args.smoke_steps,
        smoke_epochs=args.smoke_epochs,
        throughput_args=shlex.split(args.throughput_args), throughput_estimate_s=args.throughput_estimate_s,
        started=time.monotonic() - process_age_s(), argv=sys.argv[1:])


def run_window(cfg) -> int:
    """Run one window under its manifest's lock, print where its results are; the exit status."""
    from ..paths import repo_root
    from .manifest import manifest_lock
    from .runner import run_campaign

    manifest = cfg.manifest or repo_root() / "campaign" / cfg.preset / "manifest.json"
    created = not manifest.parent.exists()
    manifest.parent.mkdir(parents=True, exist_ok=True)  # the lock lies beside the manifest
    try:
        with manifest_lock(manifest):  # one window per manifest at a time: no record lost, no step run twice
            summary = run_campaign(cfg)
    finally:
        if created and not any(manifest.parent.iterdir()):  # a window refused at once leaves no empty folder
            manifest.parent.rmdir()
    print(f"window {summary['window']['id']}: {summary['outcome']}; manifest {summary['manifest']}; "
          f"results in {summary['out']}")
    return summary["exit_code"]


def _collect_lock(args):
    """The lock of the manifest ``--collect`` merges into (none when that cannot be told yet: collect then
    says what is missing)."""
    import contextlib
    import json
    from pathlib import Path

    from ..paths import repo_root
    from .manifest import manifest_lock

    dest = Path(args.dest) if args.dest else None
    if dest is None:
        try:
            preset = json.loads((Path(args.collect) / "manifest.json").read_text()).get("preset")
        except (OSError, ValueError, AttributeError):
            return contextlib.nullcontext()
        if not isinstance(preset, str):
            return contextlib.nullcontext()
        dest = repo_root() / "campaign" / preset
    if not dest.is_dir():
        return contextlib.nullcontext()
    return manifest_lock(dest / "manifest.json", doing="collecting into")


def _list(args) -> int:
    from pathlib import Path

    from ..paths import repo_root
    from .manifest import Manifest
    from .stages import default_stages

    path = Path(args.manifest) if args.manifest else repo_root() / "campaign" / args.preset / "manifest.json"
    m = Manifest.load(path, args.preset)
    print(f"{path} ({len(m.data['windows'])} window(s); fixed schedules {m.data['fixed'] or 'none yet'})")
    for s in default_stages(args.preset):
        rec = m.stage(s.name)
        extra = ""
        if rec.get("items"):
            extra = f" ({len(rec['items'])}/{len(s.evals)} evaluations)"
        print(f"  {s.name:32s} {m.status(s.name):8s}{extra}  {s.why}")
    return 0
