"""The planner: from measured throughput and the time left, the epochs of each stage (fixed before it starts).

Pure functions of numbers, so they are tested without training anything:

* :func:`plan_epochs`: the most epochs that fit ``time_s`` at ``rate`` images/s after the stage's fixed cost,
  with a safety factor, capped by the preset's epochs; None when fewer than ``min_epochs`` fit.
* :func:`warmup_for`: the preset's warmup as the same fraction of the (shorter) schedule.
* :func:`train_seconds` / :func:`eval_seconds`: what a planned stage is expected to take (an evaluation: its
  encoder forwards, plus its linear-classifier fits, :func:`eval_fits`, at :data:`PRIOR_FIT_S` each).
* :func:`decide_compile`: ``torch.compile`` only where its measured (or prior) compile time is paid back
  within the time the method trains in this window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SAFETY = 0.9  # plan at 90 % of the measured rate
EVAL_SAFETY = 2.0  # an evaluation's forward count / forward rate, times this
PRIOR_COMPILE_S = 45.0  # torch.compile of forward + backward, ViT-T/2 on an H100/H200 (benchmarks; a prior)
# Steady compiled rate over the eager smoke-step rate, measured in campaign window 1 (H200, torch 2.11): MAE
# 30,358 / 17,298 img/s = 1.75x, i-MAE 17,635 / 10,015 = 1.76x (the first prior, 1.4 from SPEC's official-code
# measurement, left a third of the window's training time unused). Kept a little below the measurement.
PRIOR_COMPILE_SPEEDUP = 1.7
# One linear_classifier fit (9 penalties + refit, L-BFGS) on 5k-10k rows x 192 features, 10 classes: latency-bound
# on a GPU, about the same for every model. Measured on an H200 with the fits one after the other (campaign window
# 1): semantics 104.5 s and 97.0 s for 42 fits + ~5 s of forwards and loading; linear-probe 7.6-8.1 s for 2 fits +
# ~3 s of features (knn: 2.9-3.3 s), i.e. ~2.3 s a fit. Since the fits run concurrently on CUDA
# (probes.linear_classifiers), and their L-BFGS now waits for the device once per function evaluation instead of
# ~40 times per iteration (imae.metrics.lbfgs), this is an upper bound until an observed evaluation replaces it.
PRIOR_FIT_S = 2.3


@dataclass
class Measured:
    """What the smoke steps measured on this machine."""

    img_per_s: dict = field(default_factory=dict)  # method -> steady training rate
    overhead_s: dict = field(default_factory=dict)  # method -> a training stage's fixed cost
    compiled_img_per_s: dict = field(default_factory=dict)  # method -> steady rate under torch.compile
    compile_s: dict = field(default_factory=dict)  # method -> measured compile time
    fwd_img_per_s: float = 0.0  # unmasked encoder forwards (evaluation)
    eval_fixed_s: float = 1.0  # per evaluation: model and data loading
    export_s: float = 0.5  # fp16 export + archive of one model
    fit_s: float = PRIOR_FIT_S  # one linear-classifier fit (a prior, not measured by the smoke steps)

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else {m: round(x, 3) for m, x in v.items()})
                for k, v in vars(self).items()}


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
