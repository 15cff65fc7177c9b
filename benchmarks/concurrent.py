"""Aggregate training throughput of N independent runs trained in one process (``imae.train.pretrain_concurrent``):
does a second (or fourth) run fill what one run leaves idle?

For each N in ``--counts`` (default 1 2 4), N runs of ``--method`` with seeds 0..N-1 train ``--steps`` optimizer
steps each through the real engine (data on the device, bf16 on CUDA, ``--compile`` optional), a step of each in
turn, each run on its own CUDA stream. A run's steady rate is its images over its training time after
``--warmup`` steps (its metrics' ``elapsed_s``, which in a concurrent run includes the time the others' steps
took, so each rate is that run's share); the aggregate is their sum, and ``speedup`` the aggregate over N = 1's,
measured in the same run. The i-MAE's teacher is an untrained MAE of the preset (the work per step is the same).

    python benchmarks/concurrent.py --preset cifar --counts 1 2 4 --steps 60 --out concurrent.json   # GPU
    python benchmarks/concurrent.py --preset tiny --device cpu --counts 1 2 --steps 6 --dataset cifar10-mini
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imae.config import METHODS, PRESETS, build_config  # noqa: E402
from imae.data.datasets import dataset_info  # noqa: E402


def steady_rate(run: Path, warmup: int, batch: int) -> float | None:
    """Images per second of ``run`` after its first ``warmup`` steps (from its metrics.jsonl)."""
    from imae.runs import read_metrics

    recs = [r for r in read_metrics(run) if "loss" in r and "elapsed_s" in r]
    start = next((r for r in recs if r["step"] >= warmup), None)
    if start is None or recs[-1]["step"] <= start["step"]:
        return None
    seconds = recs[-1]["elapsed_s"] - start["elapsed_s"]
    return (recs[-1]["step"] - start["step"]) * batch / seconds if seconds > 0 else None


def measure(n: int, args, work: Path, teacher: Path | None) -> dict:
    """N runs at once: their rates, the aggregate, and the wall time of the whole call."""
    from imae.train import pretrain_concurrent

    per_class = -(-args.steps * args.batch // args.classes)
    cfgs = [build_config(args.preset, method=args.method, **{
        "train.seed": k, "train.epochs": 1, "train.warmup_epochs": 0.1, "train.batch_size": args.batch,
        "train.device": args.device, "train.compile": args.compile, "train.log_every": args.log_every,
        "train.ckpt_every": 0, "data.subset_per_class": per_class, "data.download": False,
        **({"dataset": args.dataset} if args.dataset else {}),
        **({"data.root": args.data_root} if args.data_root else {}),
        **({"imae.teacher": str(teacher)} if teacher else {})}) for k in range(n)]
    outs = [work / f"n{n}" / f"run{k}" for k in range(n)]
    t0 = time.perf_counter()
    pretrain_concurrent(cfgs, outs)
    wall = time.perf_counter() - t0
    rates = [steady_rate(o, args.warmup, args.batch) for o in outs]
    ok = all(r is not None for r in rates)
    return {"runs": n, "steps": args.steps, "img_per_s": [round(r, 1) if r else None for r in rates],
            "aggregate_img_per_s": round(sum(rates), 1) if ok else None, "wall_s": round(wall, 2),
            "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=None, help=" | ".join(PRESETS) + " (default: cifar on CUDA, tiny on CPU)")
    p.add_argument("--method", default="mae", choices=list(METHODS))
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4], help="runs at once, each measured")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 60 on CUDA, 6 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="steps not timed (default 20 on CUDA, 2 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="batch per run (default: the preset's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--compile", action="store_true", help="each run's model under torch.compile")
    p.add_argument("--dataset", help="default: the preset's")
    p.add_argument("--data-root")
    p.add_argument("--work", help="folder for the runs (default: a temporary one, removed)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.device = "cuda" if cuda else "cpu"
    args.preset = args.preset or ("cifar" if cuda else "tiny")
    args.steps = args.steps or (60 if cuda else 6)
    args.warmup = args.warmup if args.warmup is not None else (20 if cuda else 2)
    if args.warmup >= args.steps:
        p.error(f"--warmup {args.warmup} leaves no timed step of --steps {args.steps}")
    base = build_config(args.preset, method="mae", **({"dataset": args.dataset} if args.dataset else {}))
    args.batch = args.batch or base.train.batch_size
    args.classes = dataset_info(base.data.dataset).num_classes
    args.log_every = max(1, min(10, args.steps // 6))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="imae-concurrent-"))
    try:
        teacher = None
        if args.method == "imae":
            from imae.controls import untrained_run

            teacher = untrained_run(args.preset, runs_dir=work / "teacher",
                                    **({"data.root": args.data_root} if args.data_root else {}))
        rows = []
        for n in args.counts:
            rows.append(measure(n, args, work, teacher))
            print(json.dumps(rows[-1]), flush=True)
        base = next((r["aggregate_img_per_s"] for r in rows if r["runs"] == 1), None)
        for r in rows:
            r["speedup"] = round(r["aggregate_img_per_s"] / base, 3) if base and r["aggregate_img_per_s"] else None
        device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        result = {"preset": args.preset, "method": args.method, "batch": args.batch, "device": device,
                  "compile": args.compile, "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        return result
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
