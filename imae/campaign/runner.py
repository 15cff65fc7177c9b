"""One GPU window of the campaign: preflight, smoke steps and measurement, then stages until the deadline.

    python -m imae campaign --preset cifar --budget-s 500 --out $OUT --data-pack .gpu/cifar

Order of events (every step logged to ``<out>/campaign.log`` and recorded in the manifest's window entry):

1. **Preflight**: versions (python, torch, timm, CUDA device), the imports the campaign needs, the data
   (the carried CIFAR-10 packs unpacked with ``cifar_unpack.py --check``; downloads are never attempted).
2. **Smoke steps** of each model that a pending stage trains, with the preset's real architecture on a
   small subset, through the real engine (:func:`imae.train.pretrain`): a failure stops the window at once
   with a message, before any GPU time is spent on training. The same runs measure the training
   throughput (img/s, steady epochs) and the fixed cost of a stage; a timed loop measures the encoder's
   evaluation forward rate; one fp16 export measures (and checks) writing results.
3. **Stages** in order of value (:func:`~imae.campaign.stages.default_stages`). Before a stage starts, the
   planner fixes its schedule (epochs, warmup as the preset's fraction, cosine) from the measured rates and
   its share of the time left, and records it; a stage that does not fit is not started. When a stage ends,
   its outputs (fp16 weights + card, config, metrics.jsonl, evaluation JSON) are archived into ``--out``
   and the manifest is written (to ``--manifest`` and ``<out>/manifest.json``).
4. The **watchdog** (:mod:`~imae.campaign.watchdog`) stops whatever runs ``reserve_s`` before the
   deadline; the window then records what finished and exits 0.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ImaeError, TrainingInterrupted
from ..pretrained import repo_root, sha256_file
from .manifest import CampaignError, Manifest
from .measure import MeasureMixin
from .packing import LOG_NAME, MANIFEST_NAME, Packer, clear_previous_output
from .planner import Measured
from .preflight import PreflightMixin
from .schedule import ScheduleMixin
from .stages import Stage, check_stage_names, default_stages
from .steps import StepsMixin
from .watchdog import Clock, DeadlineReached, Watchdog


@dataclass
class CampaignConfig:
    """Everything one window needs (the CLI fills it from its flags)."""

    out: Path
    preset: str = "cifar"
    budget_s: float = 500.0
    work: Path | None = None  # run folders, stage folders (default: runs/campaign-<preset>)
    manifest: Path | None = None  # default: <repo>/campaign/<preset>/manifest.json
    weights_dir: Path | None = None  # stored weights of finished stages (default: <manifest folder>/weights)
    data_pack: Path | None = None  # folder with the CIFAR-10 packs + cifar_unpack.py
    data_root: Path | None = None  # default: <work>/data with a data pack, else the config's
    stages: list[str] | None = None  # default: every stage, in order
    device: str = "auto"
    compile: str = "auto"  # auto | on | off
    overrides: dict = field(default_factory=dict)  # config overrides for every model
    epochs: dict = field(default_factory=dict)  # forced epochs of free stages, by method
    max_epochs: dict = field(default_factory=dict)  # caps, by method (default: the preset's)
    min_epochs: int = 1
    eval_extra: dict = field(default_factory=dict)  # {"*"|what: {option: value}}
    reserve_s: float | None = None  # the watchdog fires this long before the deadline
    eval_share: float = 0.3  # at most this part of the budget is held back for evaluations while planning training
    train_fraction: float = 0.7  # free-epoch training takes at most this part of the budget, so that a later
    #                              window can retrain both models (a seed stage) with their evaluations
    smoke_steps: int = 8
    smoke_epochs: int = 3
    throughput_args: list = field(default_factory=list)
    throughput_estimate_s: float | None = None
    throughput_script: Path | None = None  # default: the repository's benchmarks/throughput.py
    started: float | None = None  # monotonic time the budget counts from (default: now)
    argv: list | None = None


class Log:
    """Timestamped lines to stderr and ``<out>/campaign.log``."""

    MAX_BYTES = 4 * 2**20

    def __init__(self, path: Path, clock: Clock):
        self.path, self.clock = path, clock
        self.path.write_text("")

    def __call__(self, msg: str) -> None:
        line = f"[{self.clock.elapsed():7.1f}s] {msg}"
        print(line, file=sys.stderr, flush=True)
        if self.path.stat().st_size < self.MAX_BYTES:
            with open(self.path, "a") as f:
                f.write(line + "\n")


class Campaign(PreflightMixin, MeasureMixin, ScheduleMixin, StepsMixin):
    """One window: ``Campaign(cfg).run()``; see the module docstring. The preflight, the measurements, the
    planning and the stage work live in the mixins' modules."""

    def __init__(self, cfg: CampaignConfig):
        import torch

        from ..config import PRESETS, build_config
        from ..devices import resolve_device

        if cfg.preset not in PRESETS:
            raise CampaignError(f"unknown preset {cfg.preset!r}; choose one of {sorted(PRESETS)}")
        if cfg.budget_s <= 0:
            raise CampaignError(f"--budget-s must be positive, got {cfg.budget_s}")
        if cfg.compile not in ("auto", "on", "off"):
            raise CampaignError(f"--compile {cfg.compile!r}; choose auto, on or off")
        self.cfg = cfg
        self.torch = torch
        self.preset = cfg.preset
        self.out = Path(cfg.out)
        self.work = Path(cfg.work) if cfg.work else Path("runs") / f"campaign-{cfg.preset}"
        default_manifest = repo_root() / "campaign" / cfg.preset / "manifest.json"
        self.manifest_path = Path(cfg.manifest) if cfg.manifest else default_manifest
        self.weights_dir = Path(cfg.weights_dir) if cfg.weights_dir else self.manifest_path.parent / "weights"
        self.results_dir = self.manifest_path.parent / "results"
        self.device = resolve_device(cfg.device)
        self.all_stages = default_stages(cfg.preset)
        self.selected = check_stage_names(cfg.stages or [s.name for s in self.all_stages], self.all_stages)
        self.clock = Clock(cfg.budget_s, cfg.started)
        self.reserve_s = cfg.reserve_s if cfg.reserve_s is not None else max(3.0, 0.03 * cfg.budget_s)
        self.build_config = build_config
        self.measured = Measured()
        self.models: dict[str, Path] = {}  # resolved model refs of this window -> run dirs
        self.data_root: Path | None = None
        self.failures: list[str] = []
        self.free_train_s = 0.0  # wall time of free-epoch training in this window

    # =========================================================================================== window
    def run(self) -> dict:
        cfg = self.cfg
        removed = clear_previous_output(self.out)
        self.log = Log(self.out / LOG_NAME, self.clock)
        if removed:
            self.log(f"removed a previous campaign's output from {self.out}: {removed}")
        self.manifest = Manifest.load(self.manifest_path, self.preset)
        self.manifest.copies = [self.out / MANIFEST_NAME]
        self.window = self.manifest.new_window(budget_s=cfg.budget_s, reserve_s=self.reserve_s,
                                               device=self._device_name(), argv=cfg.argv,
                                               host=platform.node())
        self.packer = Packer(self.out)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log(f"campaign {self.preset}: window {self.window['id']}, budget {cfg.budget_s:.0f} s "
                 f"({self.clock.remaining():.0f} s left), watchdog at -{self.reserve_s:.0f} s, work {self.work}, "
                 f"manifest {self.manifest_path}")
        watchdog = Watchdog(self.clock.deadline - self.reserve_s)
        self.watchdog = watchdog
        outcome, error = "ok", None
        try:
            with watchdog:
                try:
                    self.preflight()
                    todo = self.pending()
                    self.log(f"pending stages: {[s.name for s in todo] or 'none'}")
                    if todo:
                        self.smoke_and_measure(todo)
                    for stage in todo:
                        self.run_stage(stage)
                except DeadlineReached as e:
                    outcome = "deadline"
                    self.log(f"stopped: {e}")
                except TrainingInterrupted as e:
                    outcome = "deadline"
                    self.log(f"stopped: {e}")
                except KeyboardInterrupt:
                    outcome = "interrupted"
                    self.log("interrupted (SIGINT)")
                except ImaeError as e:
                    outcome, error = f"error: {e}", e
                    self.log(f"error: {e}")
                finally:
                    watchdog.stop_raising()
                    self._finish_window(outcome)
        except DeadlineReached:  # a signal in the last instant of the with-block; the window is recorded
            pass
        if error is not None:
            raise error
        return {"window": self.window, "outcome": outcome, "exit_code": 1 if self.failures else 0,
                "manifest": str(self.manifest_path), "out": str(self.out)}

    def _finish_window(self, outcome: str) -> None:
        self.window.update({"outcome": outcome, "wall_s": round(self.clock.elapsed(), 1),
                            "left_s": round(self.clock.remaining(), 1), "measured": self.measured.to_dict()})
        if self.failures:
            self.window["failures"] = self.failures
        self.manifest.save()
        files = self.packer.check()
        self.log(f"window {self.window['id']} {outcome} after {self.clock.elapsed():.1f} s "
                 f"({self.clock.remaining():.1f} s before the deadline); {self.out}: "
                 + ", ".join(f"{n} ({s / 2**20:.2f} MiB)" for n, s in files))

    def _device_name(self) -> str:
        from ..devices import describe_device

        return describe_device(self.device)

    # ============================================================================================ stages
    def stage_by_name(self, name: str) -> Stage:
        return next(s for s in self.all_stages if s.name == name)

    def inputs_of(self, stage: Stage) -> dict:
        """What a stage was computed from: the weights sha256 of the stages it needs."""
        return {n: self.manifest.stage(n).get("result", {}).get("weights_sha256") for n in stage.needs}

    def pending(self) -> list[Stage]:
        todo = []
        for name in self.selected:
            stage = self.stage_by_name(name)
            rec = self.manifest.stage(name)
            if rec.get("status") == "done":
                if rec.get("inputs", {}) == self.inputs_of(stage):
                    continue
                self.log(f"stage {name} is done but was computed from other inputs "
                         f"({rec.get('inputs')} != {self.inputs_of(stage)}): it runs again")
            todo.append(stage)
        return todo

    def run_stage(self, stage: Stage) -> None:
        name = stage.name
        missing = [n for n in stage.needs if not self.manifest.is_done(n)]
        if missing:
            self._skip(stage, f"needs {missing} done first")
            return
        plan, why = self.plan_stage(stage)
        if plan is None:
            self._skip(stage, why)
            return
        rec = self.manifest.stage(name)
        inputs = self.inputs_of(stage)
        resuming = rec.get("status") == "started" and rec.get("plan", {}).get("train") == plan.get("train") \
            and rec.get("inputs") == inputs
        stage_dir = self.work / "stages" / name
        if stage.itemized and rec.get("inputs") not in (None, inputs):
            rec.pop("items", None)  # computed from other models: start over
            shutil.rmtree(stage_dir, ignore_errors=True)
        elif not stage.itemized and not resuming:
            rec.pop("items", None)
            shutil.rmtree(stage_dir, ignore_errors=True)
        stage_dir.mkdir(parents=True, exist_ok=True)
        if stage.itemized:
            self._seed_items(stage, stage_dir)
        rec = self.manifest.start(name, window=self.window["id"], plan=plan, inputs=inputs)
        self.manifest.save()
        self.log(f"stage {name} ({stage.why}): plan {json.dumps(plan.get('train') or {})}, "
                 f"expected {plan['estimate_s']:.0f} s of {self.clock.remaining():.0f} s left")
        t0 = time.monotonic()
        self.stage_models: dict[str, Path] = {}
        result: dict = {}
        try:
            for spec in stage.train:
                result[spec.key] = self.train_model(stage, spec, plan["train"][spec.key], stage_dir)
            complete = self.run_evals(stage, stage_dir, rec)
            if stage.throughput:
                result["throughput"] = self.run_throughput(stage_dir)
        except (DeadlineReached, TrainingInterrupted) as e:
            rec["interrupted"] = {"after_s": round(time.monotonic() - t0, 1), "why": str(e)[:300]}
            self.window["stages"][name] = "interrupted by the deadline"
            if stage.itemized and rec.get("items"):
                with self.watchdog.hold():
                    self._pack(stage, stage_dir, rec)
            self.manifest.save()
            raise
        except Exception as e:  # a stage failing must not cost the window's other stages
            msg = f"{type(e).__name__}: {e}"
            self.log(f"stage {name} failed: {msg}\n{traceback.format_exc(limit=8)}")
            self.manifest.fail(name, msg[:2000])
            self.window["stages"][name] = f"failed: {msg[:200]}"
            self.failures.append(f"{name}: {msg[:300]}")
            if stage.itemized and rec.get("items"):
                with self.watchdog.hold():
                    self._pack(stage, stage_dir, rec)
            self.manifest.save()
            return
        wall = round(time.monotonic() - t0, 1)
        if not complete:  # itemized stage: the rest waits for the next window
            with self.watchdog.hold():
                self._pack(stage, stage_dir, rec)
                n = len(rec.get("items", {}))
                self.window["stages"][name] = f"partial: {n}/{len(stage.evals)} evaluations"
                self.manifest.save()
            self.log(f"stage {name}: {self.window['stages'][name]} in {wall} s; the rest does not fit this window")
            return
        with self.watchdog.hold():
            summary = self._summarize(stage, result, wall)
            (stage_dir / "stage.json").write_text(json.dumps({"stage": name, "plan": plan, "result": summary},
                                                             indent=1) + "\n")
            try:
                archives = self._pack(stage, stage_dir, rec)
            except ImaeError as e:  # over the transfer limits: recorded as the stage's failure, loudly
                self.log(f"stage {name} failed: {e}")
                self.manifest.fail(name, str(e)[:2000])
                self.window["stages"][name] = f"failed: {str(e)[:200]}"
                self.failures.append(f"{name}: {str(e)[:300]}")
                self.manifest.save()
                return
            files = {p.relative_to(stage_dir).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                     for p in sorted(stage_dir.rglob("*")) if p.is_file() and not p.name.startswith(".")}
            self.manifest.finish(name, result=summary, files=files, wall_s=wall, device=self._device_name())
            for spec in stage.train:
                if spec.epochs == "free" and spec.method not in self.manifest.data["fixed"]:
                    p = plan["train"][spec.key]
                    self.manifest.data["fixed"][spec.method] = {
                        k: p[k] for k in ("epochs", "warmup_epochs", "blr", "batch_size")} | {"from_stage": name}
            self.window["stages"][name] = "done"
            self.manifest.save()
        sizes = ", ".join(f"{a} ({self.window['files'][a]['bytes'] / 2**20:.2f} MiB)" for a in archives)
        self.log(f"stage {name} done in {wall} s -> {sizes}")

    def _skip(self, stage: Stage, why: str) -> None:
        self.window["stages"][stage.name] = f"not started: {why}"
        self.log(f"stage {stage.name} not started: {why}")

    def _pack(self, stage: Stage, stage_dir: Path, rec: dict) -> list[str]:
        names = self.packer.pack(stage.name, stage_dir)
        rec["archives"] = names
        self.window["files"] = self.packer.catalog()
        return names

    def _summarize(self, stage: Stage, result: dict, wall: float) -> dict:
        out = {"wall_s": wall, "device": self._device_name()}
        for spec in stage.train:
            r = result[spec.key]
            out.update({f"{spec.key}_{k}": v for k, v in r.items()} if len(stage.train) > 1 else r)
        if "throughput" in result:
            out["throughput"] = result["throughput"]
        return out


def run_campaign(cfg: CampaignConfig) -> dict:
    """Run one window; see :class:`Campaign`."""
    return Campaign(cfg).run()


__all__ = ["CampaignConfig", "Campaign", "run_campaign"]
