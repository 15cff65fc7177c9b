"""End-to-end training-step throughput of MAE and i-MAE: the released engine's layout vs ours, in ONE run.

A step is everything the engine does per batch: draw anchors (and partners), augment, mix, mask, forward
(student and, for i-MAE, the frozen teacher), backward, AdamW step. Paths:

* ``faithful``  the released engine's layout: fp32 eager, timm attention with ``fused_attn=False``, separate
                decoder/teacher calls (``batched=False``), PIL RandomResizedCrop + flip in a CPU DataLoader
                (``LoaderPairSource``, ``--workers``), and a ``loss.item()`` finite check every step.
* ``fast``      ours: ``TensorPairSource`` (uint8 data and batched augmentation on the device), bf16 autocast
                on CUDA (fp32 on CPU), fused SDPA attention, batched branches, no host sync per step.
* ``fast+compile`` (``--compile``): ``fast`` with the model under ``torch.compile``; the first (compiling)
                step is timed separately as ``compile_s``.

Both paths compute the same function (tests/test_fast_path_equivalence.py) and the same FLOPs: the teacher sees the clean
images (two teacher encoder passes per step, as the released code's two passes over the mixture). FLOPs per
step are counted once per method with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions,
attention; explicit attention so CPU SDPA is counted too) and MFU = FLOPs x steps/s / ``--peak-tflops``.

    python benchmarks/throughput.py --preset cifar --batch 1024 --compile --out results.json    # GPU
    python benchmarks/throughput.py --preset tiny --batch 128 --device cpu --out tiny_cpu.json  # CPU

Options left out are chosen by device (:func:`choose_defaults`, printed at the start): on CUDA the cifar
preset at its batch (1024), 5 warm-up and 20 timed steps; on a CPU the tiny preset, batch 128 (a given
preset's batch capped at 128: the cifar preset at 1024 needs more than 24 GB there), 2 + 10 steps.

Ratios are measured against the faithful path of the same method in the same run (never across runs).
Data are synthetic uint8 images of the preset's size unless ``--dataset``/``--data-root`` name a real one.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imae.config import METHODS, PRESETS, build_config  # noqa: E402
from imae.data.datasets import load_arrays  # noqa: E402

from benchmarks.paths import PATHS, agreement, host_syncs_per_step, pool_size, synthetic_arrays, Stepper  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0  # H100/H200 SXM bf16 dense (spec sheet); the SPEC's measured matmul peak is 795
CIFAR_REPRO = {"images_per_epoch": 50_000, "mae_epochs": 100, "imae_epochs": 100}
EVAL_FIXED_S, EVAL_FORWARDS = 30.0, 500_000  # see projection()
# Defaults by device for the options left out (the batch: the preset's, on a CPU at most CPU_MAX_BATCH).
DEVICE_DEFAULTS = {"cuda": {"preset": "cifar", "warmup": 5, "steps": 20},
                   "cpu": {"preset": "tiny", "warmup": 2, "steps": 10}}
CPU_MAX_BATCH = 128


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def choose_defaults(args: argparse.Namespace, device_type: str) -> dict:
    """Fill the options left as None (preset, batch, warmup, steps) for ``device_type`` in place; returns
    {option: value} for what it chose. On a CPU the batch is the preset's, capped at ``CPU_MAX_BATCH``."""
    table = DEVICE_DEFAULTS["cuda" if device_type == "cuda" else "cpu"]
    chosen = {}
    for key in ("preset", "warmup", "steps"):
        if getattr(args, key) is None:
            setattr(args, key, table[key])
            chosen[key] = table[key]
    if args.batch is None:
        preset_batch = build_config(args.preset, method="mae").train.batch_size
        args.batch = preset_batch if device_type == "cuda" else min(preset_batch, CPU_MAX_BATCH)
        chosen["batch"] = args.batch
    return chosen


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "cpu"
    return f"{model} ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; process-wide, cumulative


def cpu_matmul_peak_tflops(seconds: float = 0.5, n: int = 1024) -> float:
    """A quick fp32 matmul rate on this CPU (the 'peak' for CPU MFU)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def measure(cfg, path: str, arrays, device, args) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    st = Stepper(cfg, path, arrays, device, workers=args.workers, n_steps=args.warmup + args.steps + 1,
                 compile_mode=args.compile_mode)
    compile_s = None
    if path == "fast+compile":  # the first step compiles forward and backward
        t0 = time.perf_counter()
        st.step()
        sync(device)
        compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        st.step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        st.step()
    sync(device)
    dt = time.perf_counter() - t0
    if not math.isfinite(float(st.losses)):
        raise FloatingPointError(f"{cfg.method}/{path}: non-finite loss during the timing")
    bsz = cfg.train.batch_size
    syncs = None if path == "faithful" else host_syncs_per_step(st)
    return {"host_syncs_per_step": syncs, "method": cfg.method, "path": path, "batch": bsz, "steps": args.steps, "seconds": dt,
            "img_per_s": args.steps * bsz / dt, "step_ms": 1000 * dt / args.steps,
            "peak_mem_mb": peak_memory_mb(device), "compile_s": compile_s,
            "workers": args.workers if path == "faithful" else None, "_stepper": st}


def profile_steps(st, device: torch.device, n: int, top: int = 15) -> list[dict]:
    """Profile ``n`` training steps: the ``top`` operators by self device time (CPU time on a CPU), each with
    its milliseconds and calls per step and its share of the profiled total: where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            st.step()
        sync(device)
    events = prof.key_averages()

    def own(e) -> float:  # microseconds; the attribute was renamed across torch versions
        if device.type == "cuda":
            return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)
        return float(e.self_cpu_time_total)

    total = sum(own(e) for e in events) or 1.0
    ranked = sorted(events, key=own, reverse=True)[:top]
    return [{"name": e.key[:160], "ms_per_step": own(e) / 1000 / n, "share": own(e) / total,
             "calls_per_step": e.count / n} for e in ranked if own(e) > 0]


# ----------------------------------------------------------------------------------------- reporting
def projection(rates: dict, compile_s: float = 0.0) -> dict:
    """Wall time of the CIFAR-10 reproduction at the measured rates: MAE 100 + i-MAE 100 epochs of 50k images.

    Evaluation allowance (our estimate): 30 s fixed (process start, data to the device, probe/kNN fits on
    cached features) + 500k encoder forward passes (clean train+test features of both models, the 10-alpha
    separability/semantics sweeps, teacher reference features) at the MAE training rate, which an unmasked
    forward of the same encoder roughly matches. Fine-tuning is not included.
    """
    r = CIFAR_REPRO
    mae_s = r["mae_epochs"] * r["images_per_epoch"] / rates["mae"]
    imae_s = r["imae_epochs"] * r["images_per_epoch"] / rates["imae"]
    eval_s = EVAL_FIXED_S + EVAL_FORWARDS / rates["mae"]
    total = mae_s + imae_s + eval_s + compile_s
    return {"mae_s": mae_s, "imae_s": imae_s, "eval_allowance_s": eval_s, "compile_s": compile_s,
            "total_s": total, "total_min": total / 60, "goal_min": 8.0}


def render(rows: list[dict]) -> str:
    head = ["method", "path", "device", "batch", "img/s", "x faithful", "MFU %", "peak mem MB", "compile s"]
    lines = [head]
    for r in rows:
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.2f}"
        lines.append([r["method"], r["path"], r["device"], str(r["batch"]), f"{r['img_per_s']:,.0f}",
                      "" if r["ratio"] is None else f"{r['ratio']:.2f}", mfu, f"{r['peak_mem_mb']:,.0f}",
                      "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    fmt = lambda line: "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
    return "\n".join([fmt(lines[0]), fmt(["-" * w for w in widths]), *map(fmt, lines[1:])])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", help=" | ".join(PRESETS) + " (default: cifar on CUDA, tiny on CPU)")
    p.add_argument("--batch", type=int, help="global batch (default: the preset's; on a CPU at most 128)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--paths", nargs="+", default=["faithful", "fast"], choices=list(PATHS))
    p.add_argument("--compile", action="store_true", help="also time fast+compile")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode: default | reduce-overhead | ...")
    p.add_argument("--warmup", type=int, help="untimed steps (default: 5 on CUDA, 2 on CPU)")
    p.add_argument("--steps", type=int, help="timed steps (default: 20 on CUDA, 10 on CPU)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="faithful DataLoader workers")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--peak-tflops", type=float, help="for MFU; default 989 on CUDA, a measured matmul on CPU")
    p.add_argument("--dataset", help="a real dataset instead of synthetic images (e.g. cifar10, cifar10-mini)")
    p.add_argument("--data-root", help="where --dataset lies")
    p.add_argument("--no-project", action="store_true", help="skip the CIFAR reproduction projection")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing each fast path, profile N more steps and record the kernels that take the "
                        "most device time (top 15 per path, in the JSON under 'profile')")
    args = p.parse_args(argv)
    if args.compile and "fast+compile" not in args.paths:
        args.paths.append("fast+compile")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    chosen = choose_defaults(args, device.type)
    if chosen:
        print(f"defaults for {device.type}: " + " ".join(f"--{k} {v}" for k, v in chosen.items()), file=sys.stderr)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dev_name = device_name(device)
    peak, peak_src = args.peak_tflops, "--peak-tflops"
    if peak is None:
        peak, peak_src = ((H100_BF16_DENSE_TFLOPS, "H100/H200 bf16 dense spec") if device.type == "cuda"
                          else (cpu_matmul_peak_tflops(), "measured fp32 matmul (1024^3)"))
    rows = []
    for method in args.methods:
        over = {"train.device": str(device), "imae.teacher": "random-init" if method == "imae" else None,
                "train.batch_size": args.batch}
        if args.dataset:
            over.update({"data.dataset": args.dataset, "data.root": args.data_root, "data.download": False})
        cfg = build_config(args.preset, method=method, **over)
        if args.dataset:
            arrays = load_arrays(cfg.data.dataset, "train", cfg.data.root, subset_per_class=cfg.data.subset_per_class,
                                 download=False)
        else:
            arrays = synthetic_arrays(cfg, pool_size(cfg, cfg.train.batch_size), seed=cfg.train.seed)
        flops = None
        agree = agreement(cfg, device)
        print(f"{method}: faithful vs fast loss terms agree to {agree:.2e} (relative)", file=sys.stderr)
        for path in args.paths:
            if path == "fast+compile" and device.type != "cuda":
                print("note: timing fast+compile on the CPU (inductor C++); the first step takes minutes",
                      file=sys.stderr)
            r = measure(cfg, path, arrays, device, args)
            st = r.pop("_stepper")
            if args.profile and path != "faithful":
                r["profile"] = profile_steps(st, device, args.profile)
            if flops is None:
                flops = st.flops_per_image()
            del st
            if path == "fast+compile":
                torch._dynamo.reset()  # drop the compiled code (and the model it holds) before the next method
            gc.collect()
            r.update(device=dev_name, gflop_per_img=flops / 1e9, agreement_rel=agree,
                     mfu=flops * r["img_per_s"] / (peak * 1e12) if peak else None)
            base = next((x for x in rows if x["method"] == method and x["path"] == "faithful"), None)
            r["ratio"] = r["img_per_s"] / base["img_per_s"] if base else None
            rows.append(r)
            print(f"{method:5s} {path:13s} {r['img_per_s']:10,.0f} img/s", file=sys.stderr, flush=True)
    print(f"\n{args.preset} preset on {dev_name} ({device.type}); peak {peak:.3g} TFLOP/s ({peak_src}); "
          f"torch {torch.__version__}")
    print(render(rows))
    for m in args.methods:
        g = next(r["gflop_per_img"] for r in rows if r["method"] == m)
        print(f"{m}: {g:.3f} GFLOP per image-step (FlopCounterMode, forward + backward"
              f"{', teacher included' if m == 'imae' else ''})")
    result = {"preset": args.preset, "device": dev_name, "device_type": device.type, "torch": torch.__version__,
              "peak_tflops": peak, "peak_source": peak_src, "threads": torch.get_num_threads(),
              "data": args.dataset or "synthetic", "rows": rows}
    fast_rates = {}
    for m in ("mae", "imae"):
        cands = [r for r in rows if r["method"] == m and r["path"] != "faithful"]
        if cands:
            best = max(cands, key=lambda r: r["img_per_s"])
            fast_rates[m] = best
    if not args.no_project and len(fast_rates) == 2:
        comp = sum(r["compile_s"] or 0.0 for r in fast_rates.values())
        proj = projection({m: r["img_per_s"] for m, r in fast_rates.items()}, comp)
        proj["paths"] = {m: r["path"] for m, r in fast_rates.items()}
        result["projection"] = proj
        print(f"\nCIFAR-10 reproduction at these rates ({args.preset} preset, batch "
              f"{fast_rates['imae']['batch']}; representative only for --preset cifar on the GPU): "
              f"MAE 100 ep {proj['mae_s']:.0f} s + i-MAE 100 ep {proj['imae_s']:.0f} s + evaluation allowance "
              f"{proj['eval_allowance_s']:.0f} s + compile {proj['compile_s']:.0f} s = {proj['total_min']:.1f} min "
              f"(goal on an H200: {proj['goal_min']:.0f} min)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
