"""Smoke steps and measurements: the first seconds of a window.

Each model a pending stage trains runs a few epochs of a few steps through the real engine
(:func:`imae.train.pretrain`), with the preset's real architecture and batch on a class-balanced subset, so
a broken model, data path or device fails before any stage starts, with a message that names what failed.
The epochs after the first give the steady training rate (img/s); the rest of the wall time is a stage's
fixed cost (data loading, model building, the first epoch's warm-up, the final checkpoint). A timed loop of
unmasked encoder forwards gives the evaluation rate, and one fp16 export + archive of the smoke model checks
(and times) the way results are written.
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
from pathlib import Path

from ..design import TEACHER_RECIPE
from ..pretrained import save_weights, verify
from .manifest import CampaignError
from .planner import worth_measuring_compile
from .stages import Stage, eval_options
from .state import Window
from .steps import resolve
from .watchdog import DeadlineReached


def smoke_and_measure(w: Window, todo: list[Stage]) -> None:
    """Smoke steps of each model a pending stage trains (fail fast), measuring throughput on the way."""
    methods = sorted({t.method for s in todo for t in s.train}, key=["mae", "imae"].index)
    if any(s.evals for s in todo) and "mae" not in methods:
        methods.insert(0, "mae")  # the evaluation rate is measured on an MAE of the preset
    t0 = time.monotonic()
    smoke_root = w.work / "smoke"
    shutil.rmtree(smoke_root, ignore_errors=True)
    runs = {}
    for method in methods:
        runs[method] = measure_training(w, method, smoke_root)
    train_s_guess = w.cfg.budget_s * 0.35
    for method in methods:
        if worth_measuring_compile(w.device.type, w.cfg.compile, train_s_guess):
            measure_training(w, method, smoke_root, compile=True)
    if "mae" in runs:
        measure_eval_and_export(w, runs["mae"], smoke_root)
    m = w.measured
    w.record["smoke_s"] = round(time.monotonic() - t0, 1)
    w.log(f"measured in {w.record['smoke_s']} s: training {({k: round(v) for k, v in m.img_per_s.items()})} "
          f"img/s, stage overhead {({k: round(v, 1) for k, v in m.overhead_s.items()})} s, compiled "
          f"{m.compiled_img_per_s or '-'} (compile {m.compile_s or '-'} s), eval forwards "
          f"{m.fwd_img_per_s:.0f} img/s, eval load {m.eval_fixed_s:.1f} s, export {m.export_s:.2f} s")


def measure_training(w: Window, method: str, smoke_root: Path, *, compile: bool = False) -> Path:
    """A few steps of ``method`` through the real engine: its steady img/s and a stage's fixed cost."""
    from ..checkpoint import load_checkpoint
    from ..config import build_config
    from ..runs import read_metrics
    from ..train import pretrain

    base = build_config(w.preset, "mae", **w.common)  # batch and data (the method's schedule below)
    if method != "mae":
        base = build_config(w.preset, method, **{**w.common, "imae.teacher": "-"})
    bs = base.train.batch_size
    per_class = math.ceil(w.cfg.smoke_steps * bs / w.n_classes)
    if base.data.subset_per_class:
        per_class = min(per_class, base.data.subset_per_class)
    over = {**w.common, "data.subset_per_class": per_class, "train.epochs": w.cfg.smoke_epochs,
            "train.warmup_epochs": 1.0, "train.log_every": 10**6, "train.ckpt_every": 10**9,
            "train.compile": compile}
    if method == "mae":
        over.update(TEACHER_RECIPE)
    else:
        over["imae.teacher"] = str(resolve(w, "untrained"))
    label = f"{method}{' + compile' if compile else ''}"
    run_dir = smoke_root / (method + ("-compiled" if compile else ""))
    t0 = time.monotonic()
    try:
        cfg = build_config(w.preset, method, **over)
        pretrain(cfg, run_dir, overwrite=True, resume=False, progress=False)
        ckpt = load_checkpoint(run_dir)
        if not ckpt.get("finished"):
            raise CampaignError("the smoke run did not finish")
    except (DeadlineReached, KeyboardInterrupt):
        raise
    except Exception as e:
        arch = f"{base.model.embed_dim}-d x {base.model.depth} blocks, patch {base.model.patch_size}"
        raise CampaignError(
            f"smoke steps of {label} ({w.preset} preset, {arch}, batch {bs}) failed on "
            f"{w.device_name}: {type(e).__name__}: {e}. Nothing was trained; fix this before spending "
            "device time (run the same command on a CPU with --preset tiny to reproduce)") from e
    wall = time.monotonic() - t0
    recs = [r for r in read_metrics(run_dir) if "img_per_s" in r]
    if not recs:
        raise CampaignError(f"smoke steps of {label}: no metrics were logged in {run_dir}")
    rates = [r["img_per_s"] for r in recs]
    steady = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]
    images = ckpt["step"] * bs * base.train.accum_iter
    overhead = max(0.0, wall - images / steady)
    if compile:
        w.measured.compiled_img_per_s[method] = steady
        w.measured.compile_s[method] = max(0.0, overhead - w.measured.overhead_s.get(method, 0.0))
    else:
        w.measured.img_per_s[method] = steady
        w.measured.overhead_s[method] = overhead
    w.log(f"smoke {label}: {ckpt['step']} steps of {bs} in {wall:.1f} s, loss {recs[-1].get('loss'):.4f}, "
          f"steady {steady:.0f} img/s (epochs: {', '.join(f'{r:.0f}' for r in rates)}), "
          f"fixed cost {overhead:.1f} s")
    return run_dir


def measure_eval_and_export(w: Window, mae_run: Path, smoke_root: Path) -> None:
    """The encoder's evaluation forward rate, the cost of loading a model and its data, and the cost (and
    check) of writing results: one fp16 export of the smoke MAE, archived as a stage would be."""
    import torch

    from ..checkpoint import load_checkpoint
    from ..config import RunConfig
    from ..metrics.features import autocast, load_eval_data
    from ..metrics.loading import load_model

    t0 = time.monotonic()
    lm = load_model(mae_run, device=w.device)
    load_eval_data(lm.config, data_root=str(w.data_root) if w.data_root else None)
    w.measured.eval_fixed_s = time.monotonic() - t0
    bs = eval_options(w.preset, "knn", w.cfg.eval_extra).get("batch_size", 256)
    if w.device.type != "cuda":  # a rate, not a full batch: keep a CPU's measurement to a second or two
        bs = min(bs, 32)
    size = lm.config.model.img_size
    x = torch.randn(bs, lm.config.model.in_chans, size, size, device=w.device)
    n, t_run = 0, 0.0
    with torch.no_grad(), autocast(w.device):
        lm.mae.forward_features(x)
        _sync(w)
        t1 = time.monotonic()
        while n < 50 and (time.monotonic() - t1) < 1.0:
            lm.mae.forward_features(x)
            n += 1
        _sync(w)
        t_run = time.monotonic() - t1
    w.measured.fwd_img_per_s = n * bs / max(t_run, 1e-9)
    del lm
    t0 = time.monotonic()
    ckpt = load_checkpoint(mae_run)
    cfg = RunConfig.from_dict(ckpt["config"])
    folder = smoke_root / "export"
    save_weights(ckpt["model"], cfg, folder, "smoke-mae", fingerprint=ckpt["fingerprint"],
                 max_bytes=w.cfg.max_model_bytes)
    verify(folder / "smoke-mae.json")
    (smoke_root / "pack-test").mkdir(parents=True, exist_ok=True)
    w.cfg.packer(smoke_root / "pack-test").pack("smoke", folder)
    w.measured.export_s = time.monotonic() - t0


def _sync(w: Window) -> None:
    if w.device.type == "cuda":
        import torch

        torch.cuda.synchronize(w.device)


__all__ = ["measure_eval_and_export", "measure_training", "smoke_and_measure"]
