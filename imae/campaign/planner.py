"""Planning: from measured throughput and the time left, each stage's schedule, fixed just before it starts.

The arithmetic is pure functions of numbers, tested without training anything:

* :func:`plan_epochs`: the most epochs that fit ``time_s`` at ``rate`` images/s after the stage's fixed cost,
  with a safety factor, capped by the preset's epochs; None when fewer than ``min_epochs`` fit.
* :func:`warmup_for`: the preset's warmup as the same fraction of the (shorter) schedule.
* :func:`train_seconds` / :func:`eval_seconds`: what a planned stage is expected to take (an evaluation: its
  encoder forwards, plus its linear-classifier fits, :func:`eval_fits`, at :data:`PRIOR_FIT_S` each).
* :func:`decide_compile`: ``torch.compile`` only where its measured (or prior) compile time is paid back
  within the time the method trains in this window.

:func:`plan_stage` applies it to a window (:class:`~imae.campaign.state.Window`): free-epoch stages (the first
teacher and i-MAE) split the training time left by their shares, after the time held back for the window's
evaluation stage; fixed-epoch stages reuse the schedule the manifest fixed; a stage whose expected time exceeds
what is left is not started (forced epochs excepted: the watchdog stops them).
"""

from __future__ import annotations

import math

from .stages import Stage, TrainSpec, eval_options
from .state import PRIOR_FIT_S, Measured, Window, item_done

SAFETY = 0.9  # plan at 90 % of the measured rate
EVAL_SAFETY = 2.0  # an evaluation's forward count / forward rate, times this
PRIOR_COMPILE_S = 45.0  # torch.compile of forward + backward, ViT-T/2 on an H100/H200 (benchmarks; a prior)
# Steady compiled rate over the eager smoke-step rate, measured in campaign window 1 (H200, torch 2.11): MAE
# 30,358 / 17,298 img/s = 1.75x, i-MAE 17,635 / 10,015 = 1.76x (the first prior, 1.4 from SPEC's official-code
# measurement, left a third of the window's training time unused). Kept a little below the measurement.
PRIOR_COMPILE_SPEEDUP = 1.7
THROUGHPUT_PRIOR_S = {"cuda": 240.0, "cpu": 60.0}  # the benchmark with compile, both methods (a prior)


def plan_epochs(time_s: float, rate: float, images_per_epoch: int, overhead_s: float, *, cap: int,
                min_epochs: int = 1, safety: float = SAFETY) -> int | None:
    """Epochs that fit ``time_s`` seconds (None: fewer than ``min_epochs``)."""
    if rate <= 0 or images_per_epoch <= 0:
        return None
    usable = time_s - overhead_s
    epochs = min(int(math.floor(usable * rate * safety / images_per_epoch)), int(cap))
    return epochs if epochs >= max(1, min_epochs) else None


def warmup_for(epochs: int, preset_epochs: int, preset_warmup: float) -> float:
    """The preset's warmup as the same fraction of ``epochs`` (3 decimals), below the whole schedule."""
    if preset_epochs <= 0:
        return 0.0
    w = round(preset_warmup * epochs / preset_epochs, 3)
    return min(w, max(0.0, epochs - 0.001))


def train_seconds(epochs: int, rate: float, images_per_epoch: int, overhead_s: float, done_images: int = 0) -> float:
    """Expected wall time of a training stage (``done_images`` already trained: a resumed run)."""
    left = max(0, epochs * images_per_epoch - done_images)
    return overhead_s + left / max(rate, 1e-9)


def eval_forwards(what: str, options: dict, n_train: int, n_test: int, n_classes: int = 10) -> float:
    """Encoder forward passes (image-equivalents) one evaluation costs, from its options (the registered
    evaluation's cost model, :mod:`imae.evaluations`)."""
    from .. import evaluations
    from ..metrics.features import DEFAULT_ALPHAS

    ev = evaluations.get(what)
    cap = options.get("max_images")
    ntr = min(n_train, (cap // n_classes) * n_classes) if cap and not ev.trains else n_train  # fine-tuning: every image
    nte = min(n_test, (cap // n_classes) * n_classes) if cap else n_test
    alphas = len(options.get("alphas") or DEFAULT_ALPHAS)
    return float(ev.forwards(options, ntr, nte, alphas)) if ev.forwards else float(ntr + nte)


def eval_fits(what: str, options: dict) -> int:
    """Linear-classifier fits (:func:`imae.metrics.probes.linear_classifier`) one evaluation makes: one per pool
    for the linear probe; for the degree of semantics the clean probe's plus one per pool x {sub, dom} x alpha."""
    from .. import evaluations
    from ..metrics.features import DEFAULT_ALPHAS, POOLS

    ev = evaluations.get(what)
    pools = len(options.get("pools") or POOLS)
    return int(ev.fits(options, pools, len(options.get("alphas") or DEFAULT_ALPHAS))) if ev.fits else 0


def eval_seconds(what: str, options: dict, measured: Measured, n_train: int, n_test: int,
                 observed: list[float] = ()) -> float:
    """Expected wall time of one evaluation: the slowest observed one of the same kind if any, else forwards
    at the measured rate (with :data:`EVAL_SAFETY`) plus loading plus its classifier fits at ``measured.fit_s``."""
    if observed:
        return max(observed) * 1.2
    fw = eval_forwards(what, options, n_train, n_test)
    return (measured.eval_fixed_s + EVAL_SAFETY * fw / max(measured.fwd_img_per_s, 1e-9)
            + eval_fits(what, options) * measured.fit_s)


def share_of(time_s: float, weight: float, pending_weights: list[float]) -> float:
    """A stage's part of ``time_s`` when it and the later free-epoch stages split it by weight."""
    total = weight + sum(pending_weights)
    return time_s * weight / total if total > 0 else time_s


def decide_compile(mode: str, device_type: str, train_s: float, *, eager_rate: float,
                   compiled_rate: float | None = None, compile_s: float | None = None) -> tuple[bool, str]:
    """(compile?, why). ``mode``: on | off | auto. Auto compiles on CUDA only when the time saved over
    ``train_s`` seconds of training exceeds the compile time (measured values where given, else priors)."""
    if mode == "on":
        return True, "--compile on"
    if mode == "off":
        return False, "--compile off"
    if device_type != "cuda":
        return False, "auto: not on CUDA (inductor's CPU compile takes minutes)"
    measured = compiled_rate is not None and compile_s is not None
    speedup = compiled_rate / eager_rate if measured else PRIOR_COMPILE_SPEEDUP
    cost = compile_s if measured else PRIOR_COMPILE_S
    saved = train_s * (1.0 - 1.0 / speedup)
    src = "measured" if measured else "prior"
    why = f"auto ({src}): saves {saved:.0f} s of {train_s:.0f} s at {speedup:.2f}x, compiling costs {cost:.0f} s"
    return saved > cost, why


def worth_measuring_compile(device_type: str, mode: str, train_s: float) -> bool:
    """Measure compiled throughput in the smoke steps only where the prior says compiling may pay even after
    paying for the measurement (a second compile)."""
    if mode != "auto" or device_type != "cuda":
        return False
    return train_s * (1.0 - 1.0 / PRIOR_COMPILE_SPEEDUP) > 2 * PRIOR_COMPILE_S


# ============================================================================================ a window's stages
def plan_stage(w: Window, stage: Stage) -> tuple[dict | None, str]:
    """The stage's schedule and expected time, or (None, why) when it does not fit what is left."""
    left = w.clock.remaining() - w.reserve_s
    plan: dict = {"train": {}}
    estimate = 0.0
    rec = w.manifest.stage(stage.name)
    for spec in stage.train:
        tp, why = plan_training(w, stage, spec, left - estimate, rec)
        if tp is None:
            return None, why
        plan["train"][spec.key] = tp
        estimate += tp["expected_s"] + w.measured.export_s
    items = [(m, what) for m, what in stage.evals if not item_done(w, stage, m, what)]
    eval_s = [eval_estimate(w, what) for _, what in items]
    if stage.throughput:
        estimate += w.cfg.throughput_estimate_s or THROUGHPUT_PRIOR_S.get(w.device.type, 60.0)
    if stage.itemized:
        if eval_s and eval_s[0] > left:
            return None, f"its next evaluation needs ~{eval_s[0]:.0f} s, {left:.0f} s are left"
        estimate += sum(eval_s)
    else:
        estimate += sum(eval_s)
        forced = any(tp.get("forced") for tp in plan["train"].values())
        if estimate > left and not forced:  # forced epochs run anyway: the watchdog stops them
            return None, f"needs ~{estimate:.0f} s, {left:.0f} s are left"
    plan["estimate_s"] = round(estimate, 1)
    plan["left_s"] = round(left, 1)
    if not plan["train"]:
        plan.pop("train")
    return plan, ""


def run_dir_of(w: Window, stage: Stage, spec: TrainSpec):
    """Where a stage trains one of its models (a resumed stage finds its checkpoint there)."""
    return w.work / "runs" / f"{stage.name}-{spec.key}"


def plan_training(w: Window, stage: Stage, spec: TrainSpec, left: float, rec: dict) -> tuple[dict | None, str]:
    """One model's schedule (epochs, warmup, compile, expected time), or (None, why)."""
    cfg = w.cfg
    preset_cfg = preset_train(w, spec.schedule_of or spec.method)
    m = w.measured
    rate = m.img_per_s.get(spec.method, 0.0)
    overhead = m.overhead_s.get(spec.method, 0.0)
    old = (rec.get("plan") or {}).get("train", {}).get(spec.key) if rec.get("status") == "started" else None
    run_dir = run_dir_of(w, stage, spec)
    compile_on, compile_why = False, "off"
    if spec.epochs == "free":
        if old and (run_dir / "checkpoint.pt").is_file():  # resume the same schedule where it stopped
            return {**old, "resumed": True}, ""
        if spec.method in cfg.epochs:
            epochs, why = int(cfg.epochs[spec.method]), "forced (--epochs)"
            need = train_seconds(epochs, rate, w.images_per_epoch, overhead)
            if need > left:
                w.log(f"warning: {spec.method}: the forced {epochs} epochs need ~{need:.0f} s, {left:.0f} s "
                      "are left; the watchdog will stop it (the stage then stays unfinished)")
        else:
            later = [s.share for s in later_free_stages(w, stage)]
            cap_s = cfg.train_fraction * cfg.budget_s - w.free_train_s
            avail = share_of(min(left - eval_reserve(w, stage), cap_s), stage.share, later)
            compile_on, compile_why = decide_compile(
                cfg.compile, w.device.type, avail - overhead, eager_rate=rate,
                compiled_rate=m.compiled_img_per_s.get(spec.method), compile_s=m.compile_s.get(spec.method))
            if compile_on and spec.method in m.compiled_img_per_s:
                rate = m.compiled_img_per_s[spec.method]
                overhead += m.compile_s[spec.method]
            elif compile_on:
                overhead += PRIOR_COMPILE_S
            cap = int(cfg.max_epochs.get(spec.method, preset_cfg.epochs))
            epochs = plan_epochs(avail, rate, w.images_per_epoch, overhead, cap=cap, min_epochs=cfg.min_epochs)
            if epochs is None:
                return None, (f"{spec.method}: fewer than {max(1, cfg.min_epochs)} epoch(s) fit its "
                              f"{avail:.0f} s share at {rate:.0f} img/s ({w.images_per_epoch} img/epoch, "
                              f"{overhead:.0f} s fixed cost)")
            why = f"fits {avail:.0f} s at {rate:.0f} img/s (cap {cap})"
        warmup = warmup_for(epochs, preset_cfg.epochs, preset_cfg.warmup_epochs)
    else:
        fixed = w.manifest.data["fixed"].get(spec.epochs.split(":", 1)[1])
        if not fixed:
            return None, f"the schedule {spec.epochs} is not fixed yet (its first stage has not finished)"
        epochs, warmup, why = int(fixed["epochs"]), float(fixed["warmup_epochs"]), f"same as {spec.epochs[6:]}"
        if old and (run_dir / "checkpoint.pt").is_file():
            return {**old, "resumed": True}, ""
    expected = train_seconds(epochs, rate, w.images_per_epoch, overhead)
    ckpt_every = max(1, int(rate * 120.0 / preset_cfg.batch_size)) if rate > 0 else 0
    return {"epochs": epochs, "warmup_epochs": warmup, "blr": preset_cfg.blr, "batch_size": preset_cfg.batch_size,
            "forced": spec.epochs == "free" and spec.method in cfg.epochs,
            "compile": compile_on, "compile_why": compile_why, "why": why, "rate_img_s": round(rate, 1),
            "images_per_epoch": w.images_per_epoch, "overhead_s": round(overhead, 1),
            "expected_s": round(expected, 1), "ckpt_every": ckpt_every}, ""


def preset_train(w: Window, method: str):
    """The preset's training section for ``method`` (with the user's overrides)."""
    from ..config import build_config

    extra = {"imae.teacher": "-"} if method == "imae" else {}  # a placeholder: only the schedule is read
    return build_config(w.preset, method, **{**w.cfg.overrides, **extra}).train


def later_free_stages(w: Window, stage: Stage) -> list[Stage]:
    """The selected stages after ``stage`` that still train with free epochs (they share the time left)."""
    out = []
    for n in w.selected[w.selected.index(stage.name) + 1:]:
        s = w.stage(n)
        if any(t.epochs == "free" and t.method not in w.cfg.epochs for t in s.train) and not w.manifest.is_done(n):
            out.append(s)
    return out


def eval_reserve(w: Window, stage: Stage) -> float:
    """Time held back, while planning training, for a pending evaluation stage of this window."""
    total = 0.0
    for n in w.selected[w.selected.index(stage.name) + 1:]:
        s = w.stage(n)
        if s.itemized and not w.manifest.is_done(n) and not s.train:
            total += sum(eval_estimate(w, what) for m, what in s.evals if not item_done(w, s, m, what))
            break  # the first evaluation stage only: later ones wait for later windows
    return min(total, w.cfg.eval_share * w.cfg.budget_s)


def eval_estimate(w: Window, what: str) -> float:
    """Expected wall time of evaluation ``what`` on this window's device: the slowest recorded one of the same
    kind (timed with today's classifier optimiser where it fits classifiers), else the cost model."""
    from ..metrics.probes import OPTIMIZER

    opts = eval_options(w.preset, what, w.cfg.eval_extra)
    fits = eval_fits(what, opts) > 0  # timed with today's classifier optimiser only (probes.OPTIMIZER)
    observed = [it["wall_s"] for rec in w.manifest.stages.values() for key, it in rec.get("items", {}).items()
                if key.endswith(f"/{what}") and it.get("device") == w.device_name
                and (not fits or it.get("optimizer") == OPTIMIZER)]
    return eval_seconds(what, opts, w.measured, w.n_train, w.n_test, observed)


__all__ = ["Measured", "PRIOR_COMPILE_S", "PRIOR_COMPILE_SPEEDUP", "PRIOR_FIT_S", "THROUGHPUT_PRIOR_S", "decide_compile",
           "eval_estimate", "eval_fits", "eval_forwards", "eval_seconds", "plan_epochs", "plan_stage", "plan_training",
           "share_of", "train_seconds", "warmup_for", "worth_measuring_compile"]
