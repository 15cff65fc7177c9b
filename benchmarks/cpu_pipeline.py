"""Wall time and peak memory of the whole tiny-preset pipeline on the CPU: MAE, then i-MAE, then evaluations.

    python benchmarks/cpu_pipeline.py --dataset cifar10-mini --data-root DATA_ROOT --json cpu_pipeline.json

Each stage trains from scratch into a fresh run directory (``--out-dir``, default a temporary folder) with the
tiny preset (MAE 30 epochs, i-MAE 20 epochs with that MAE as teacher and initialisation). Evaluations run
when this checkout's ``imae.metrics`` provides ``evaluate(checkpoint, what, ...)``: every evaluation of
``imae.metrics.WHATS`` except fine-tuning (or ``--eval-what``), for both models; otherwise the stage is
reported as skipped.
Peak RSS is the process's high-water mark after each stage (``resource``; cumulative, so it never falls).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imae.config import build_config  # noqa: E402
from imae.train import pretrain  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def find_metrics():
    """This checkout's ``imae.metrics`` module, or None and the reason it cannot be used."""
    import imae

    try:
        metrics = importlib.import_module("imae.metrics")
    except ImportError as e:
        return None, f"imae.metrics is not available in this checkout ({e})"
    here = Path(imae.__file__).resolve().parent
    where = getattr(metrics, "__file__", None)
    if where is None or here not in Path(where).resolve().parents:  # e.g. an empty namespace folder elsewhere
        return None, f"imae.metrics is not part of this checkout ({here})"
    return metrics, None


def run_evaluations(metrics, runs: dict, args) -> dict:
    """``metrics.evaluate(run, what, device='cpu', dataset=..., data_root=...)`` for every run and evaluation.

    Evaluations: ``--eval-what``, default every one in ``metrics.WHATS`` except fine-tuning. A failing
    evaluation is recorded with its error (the timing of the others still counts).
    """
    fn = getattr(metrics, "evaluate", None)
    if not callable(fn) or not {"what"} <= set(inspect.signature(fn).parameters):
        return {"skipped": "imae.metrics has no evaluate(checkpoint, what, ...) entry point"}
    whats = args.eval_what or [w for w in getattr(metrics, "WHATS", ()) if w != "finetune"]  # the registry's, via imae.metrics
    if not whats:
        return {"skipped": "no evaluation named (imae.metrics.WHATS is empty; pass --eval-what)"}
    done = []
    for name, run in runs.items():
        for what in whats:
            t0, rec = time.perf_counter(), {"model": name, "what": what}
            try:
                fn(str(run), what, device="cpu", dataset=args.dataset, data_root=args.data_root)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                rec["error"] = f"{type(e).__name__}: {e}"[:300]
            rec["seconds"] = time.perf_counter() - t0
            done.append(rec)
            print(f"  evaluate {name:4s} {what:15s} {rec['seconds']:7.1f} s" + (f"  ERROR {rec['error']}"
                                                                          if "error" in rec else ""), flush=True)
    return {"evaluations": done}


def _overrides(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        k, _, v = item.partition("=")
        out[k.strip()] = yaml.safe_load(v)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="cifar10-mini")
    p.add_argument("--data-root", default=None, help="data root (default $IMAE_DATA or ./data)")
    p.add_argument("--out-dir", help="where the two run directories go (default: a temporary folder)")
    p.add_argument("--threads", type=int, help="torch CPU threads (on a shared machine: the free cores)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for both stages")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--eval-what", nargs="+", help="evaluations to time (default: all of imae.metrics.WHATS but "
                                                   "finetune)")
    p.add_argument("--json", help="write the timings here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    over = {"data.dataset": args.dataset, "data.root": args.data_root, "data.download": False,
            "train.device": "cpu", **_overrides(args.set)}
    tmp = None
    if args.out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="imae-cpu-pipeline-")
    out = Path(args.out_dir or tmp.name)
    stages, t_all = [], time.perf_counter()

    def stage(name, fn):
        t0 = time.perf_counter()
        extra = fn()
        rec = {"stage": name, "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), **(extra or {})}
        stages.append(rec)
        print(f"{name:10s} {rec['seconds']:8.1f} s   peak RSS {rec['peak_rss_mb']:,.0f} MB"
              + (f"   ({rec['skipped']})" if "skipped" in rec else ""), flush=True)
        return rec

    mae_cfg = build_config("tiny", method="mae", **over)
    stage("mae", lambda: {"steps": _train(mae_cfg, out / "mae")})
    imae_cfg = build_config("tiny", method="imae", **{**over, "imae.teacher": str(out / "mae")})
    stage("imae", lambda: {"steps": _train(imae_cfg, out / "imae")})
    if not args.skip_eval:
        metrics, why = find_metrics()
        runs = {"mae": out / "mae", "imae": out / "imae"}
        stage("evaluate", lambda: run_evaluations(metrics, runs, args) if metrics else {"skipped": why})
    total = time.perf_counter() - t_all
    result = {"preset": "tiny", "dataset": args.dataset, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "stages": stages, "total_s": total, "peak_rss_mb": peak_rss_mb()}
    print(f"total      {total:8.1f} s   peak RSS {result['peak_rss_mb']:,.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    if tmp is not None:
        tmp.cleanup()
    return result


def _train(cfg, out: Path) -> int:
    from imae.runs import read_metrics

    run = pretrain(cfg, out, resume=False, overwrite=True, progress=False)
    recs = read_metrics(run)
    return max((r.get("step", 0) for r in recs), default=0)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
