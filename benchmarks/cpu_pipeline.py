"""Wall time and peak memory of the whole tiny-preset pipeline on the CPU: MAE, then i-MAE, then evaluations.

    python benchmarks/cpu_pipeline.py --dataset cifar10-mini --data-root ../shared/data --json cpu_pipeline.json

Each stage trains from scratch into a fresh run directory (``--out-dir``, default a temporary folder) with the
tiny preset (MAE 30 epochs, i-MAE 20 epochs with that MAE as teacher and initialisation). Evaluations run
when ``imae.metrics`` provides an ``evaluate`` function; otherwise the stage is reported as skipped.
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


def evaluate(mae_dir: Path, imae_dir: Path, args) -> dict:
    """Run ``imae.metrics.evaluate`` if this checkout has it, passing what its signature asks for."""
    import imae

    try:
        metrics = importlib.import_module("imae.metrics")
    except ImportError as e:
        return {"skipped": f"imae.metrics is not available in this checkout ({e})"}
    here = Path(imae.__file__).resolve().parent
    where = getattr(metrics, "__file__", None)
    if where is None or here not in Path(where).resolve().parents:  # e.g. an empty namespace folder elsewhere
        return {"skipped": f"imae.metrics is not part of this checkout ({here})"}
    fn = getattr(metrics, "evaluate", None)
    if not callable(fn):
        return {"skipped": "imae.metrics has no evaluate() function"}
    offer = {"run": imae_dir, "run_dir": imae_dir, "imae_run": imae_dir, "runs": [mae_dir, imae_dir],
             "mae_run": mae_dir, "baseline": mae_dir, "teacher": mae_dir, "device": "cpu",
             "data_root": args.data_root, "root": args.data_root, "dataset": args.dataset, "preset": "tiny"}
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in offer.items() if k in params}
    missing = [k for k, p in params.items() if p.default is p.empty and k not in kwargs
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if missing:
        return {"skipped": f"imae.metrics.evaluate needs {missing}, which this benchmark does not know how to give"}
    result = fn(**kwargs)
    return {"result": result if isinstance(result, (dict, list, str, int, float)) else repr(result)[:500]}


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
        stage("evaluate", lambda: evaluate(out / "mae", out / "imae", args))
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
