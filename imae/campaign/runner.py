"""One window of the campaign: preflight, smoke steps and measurement, then stages until the deadline.

    python -m imae campaign --preset cifar --budget-s 3300 --out OUT --data-root DATA

Order of events (every step logged to ``<out>/campaign.log`` and recorded in the manifest's window entry):

1. **Preflight** (:func:`~imae.campaign.preflight.preflight`): versions (python, torch, timm, CUDA device),
   the imports the campaign needs, the data (never downloaded).
2. **Smoke steps** (:func:`~imae.campaign.measure.smoke_and_measure`) of each model that a pending stage
   trains, with the preset's real architecture on a small subset, through the real engine
   (:func:`imae.train.pretrain`): a failure stops the window at once with a message, before any GPU time is
   spent on training. The same runs measure the training throughput (img/s, steady epochs) and the fixed cost
   of a stage; a timed loop measures the encoder's evaluation forward rate; one fp16 export measures (and
   checks) writing results.
3. **Stages** in order of value (:func:`~imae.campaign.stages.default_stages`), each by
   :func:`~imae.campaign.steps.run_stage`. Before a stage starts, the planner
   (:func:`~imae.campaign.planner.plan_stage`) fixes its schedule (epochs, warmup as the preset's fraction,
   cosine) from the measured rates and its share of the time left, and records it; a stage that does not fit
   is not started. When a stage ends, its outputs (fp16 weights + card, config, metrics.jsonl, evaluation
   JSON) are archived into ``--out`` and the manifest is written (to ``--manifest`` and ``<out>/manifest.json``).
4. The **watchdog** (:mod:`~imae.campaign.watchdog`) stops whatever runs ``reserve_s`` before the
   deadline; the window then records what finished and exits 0.

The window's state is one :class:`~imae.campaign.state.Window`, passed to each of these functions.
"""

from __future__ import annotations

import platform
import time

from ..errors import ImaeError, TrainingInterrupted
from . import compilecache
from .manifest import Manifest
from .measure import smoke_and_measure
from .packing import LOG_NAME, MANIFEST_NAME, clear_previous_output
from .preflight import preflight
from .state import CampaignConfig, Log, Window, open_window, pending
from .steps import run_stage
from .watchdog import DeadlineReached, Watchdog


def run_campaign(cfg: CampaignConfig) -> dict:
    """Run one window; see the module docstring. Returns {"window": its manifest entry, "outcome",
    "exit_code", "manifest", "out"}."""
    w = open_window(cfg)
    removed = clear_previous_output(w.out)
    w.log = Log(w.out / LOG_NAME, w.clock)
    if removed:
        w.log(f"removed a previous campaign's output from {w.out}: {removed}")
    w.manifest = Manifest.load(w.manifest_path, w.preset)
    w.manifest.copies = [w.out / MANIFEST_NAME]
    w.record = w.manifest.new_window(budget_s=cfg.budget_s, reserve_s=w.reserve_s, device=w.device_name,
                                     argv=cfg.argv, host=platform.node())
    w.packer = cfg.packer(w.out)
    w.work.mkdir(parents=True, exist_ok=True)
    w.log(f"campaign {w.preset}: window {w.record['id']}, budget {cfg.budget_s:.0f} s "
          f"({w.clock.remaining():.0f} s left), watchdog at -{w.reserve_s:.0f} s, work {w.work}, "
          f"manifest {w.manifest_path}")
    w.watchdog = Watchdog(w.clock.deadline - w.reserve_s)
    outcome, error = "ok", None
    try:
        with w.watchdog:
            try:
                preflight(w)
                w.record["compile_cache"] = compilecache.load(w.manifest_path.parent / compilecache.FOLDER,
                                                              w.device, w.log)
                todo = pending(w)
                w.log(f"pending stages: {[s.name for s in todo] or 'none'}")
                if todo:
                    smoke_and_measure(w, todo)
                for stage in todo:
                    run_stage(w, stage)
            except (DeadlineReached, TrainingInterrupted) as e:
                outcome = "deadline"
                w.log(f"stopped: {e}")
            except KeyboardInterrupt:
                outcome = "interrupted"
                w.log("interrupted (SIGINT)")
            except ImaeError as e:
                outcome, error = f"error: {e}", e
                w.log(f"error: {e}")
            finally:
                w.watchdog.stop_raising()
                finish_window(w, outcome)
    except DeadlineReached:  # a signal in the last instant of the with-block; the window is recorded
        pass
    if error is not None:
        raise error
    return {"window": w.record, "outcome": outcome, "exit_code": 1 if w.failures else 0,
            "manifest": str(w.manifest_path), "out": str(w.out)}


def finish_window(w: Window, outcome: str) -> None:
    """Record the window's outcome, measurements and where its time went in the manifest, carry what it compiled
    to the next window, and list the output folder."""
    if w.record.get("compile_cache") is not None:  # preflight passed: torch is there
        t0 = time.monotonic()
        try:
            w.record["compile_cache"]["saved"] = compilecache.save(w.out, w.device, w.log)
        except Exception as e:  # noqa: BLE001 - the artefacts are a speed-up; the window's results come first
            w.log(f"compile artefacts not saved ({type(e).__name__}: {str(e)[:200]}); the next window compiles")
        w.spent["pack"] += time.monotonic() - t0
    w.record["breakdown_s"] = breakdown(w)
    w.record.update({"outcome": outcome, "wall_s": round(w.clock.elapsed(), 1),
                     "left_s": round(w.clock.remaining(), 1), "measured": w.measured.to_dict()})
    if w.failures:
        w.record["failures"] = w.failures
    w.manifest.save()
    files = w.packer.check()
    w.log(f"window {w.record['id']} {outcome} after {w.clock.elapsed():.1f} s "
          f"({w.clock.remaining():.1f} s before the deadline); {w.out}: "
          + ", ".join(f"{n} ({s / 2**20:.2f} MiB)" for n, s in files))


def breakdown(w: Window) -> dict:
    """Where the window's wall time went, in seconds: preflight and smoke steps (``measure``), steady
    ``training``, each training's ``startup`` (compiling, warm-up, loading: its wall time beyond the steady
    training), ``evaluation``, the throughput ``benchmark``, ``pack`` (exporting weights, archiving, carrying
    compile artefacts) and ``idle`` (the rest: planning, waiting, and the reserve left before the deadline)."""
    spent = {"measure": float(w.record.get("preflight_s", 0.0)) + float(w.record.get("smoke_s", 0.0)), **w.spent}
    spent["idle"] = max(0.0, w.clock.elapsed() - sum(spent.values()))
    return {k: round(v, 1) for k, v in spent.items()}


__all__ = ["CampaignConfig", "breakdown", "finish_window", "run_campaign"]
