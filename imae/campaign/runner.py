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
import math
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ImaeError, TrainingInterrupted
from ..pretrained import MAX_MODEL_BYTES, materialize_run, repo_root, save_weights, sha256_file, verify
from .manifest import CampaignError, Manifest
from .packing import LOG_NAME, MANIFEST_NAME, Packer, clear_previous_output
from .planner import (Measured, decide_compile, eval_seconds, plan_epochs, share_of, train_seconds, warmup_for,
                      worth_measuring_compile)
from .stages import Stage, TrainSpec, check_stage_names, default_stages, eval_options
from .watchdog import Clock, DeadlineReached, Watchdog

PACK_FILES = ("train_jpeg.npz", "test_webp.npz", "batches.meta", "cifar_unpack.py")
THROUGHPUT_PRIOR_S = {"cuda": 240.0, "cpu": 60.0}


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


class Campaign:
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
        self.manifest_path = Path(cfg.manifest) if cfg.manifest else repo_root() / "campaign" / cfg.preset / "manifest.json"
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

    # ========================================================================================= preflight
    def preflight(self) -> None:
        t0 = time.monotonic()
        vers = versions(self.device)
        self.window["versions"] = vers
        self.log("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
        check_imports(need_benchmarks="throughput" in self.selected)
        if self.device.type == "cpu" and self.preset not in ("tiny", "small"):
            self.log(f"warning: no CUDA device; the {self.preset} preset on a CPU fits few epochs in the budget")
        self.data_root = self.prepare_data()
        self.common = {**self.cfg.overrides, "data.root": str(self.data_root) if self.data_root else None,
                       "data.download": False, "train.device": str(self.device)}
        base = self.build_config(self.preset, "mae", **self.common)
        from ..data.datasets import dataset_info, load_arrays

        info = dataset_info(base.data.dataset)
        train = load_arrays(base.data.dataset, "train", base.data.root, subset_per_class=base.data.subset_per_class,
                            download=False)
        test = load_arrays(base.data.dataset, "test", base.data.root, download=False)
        self.n_train, self.n_test, self.n_classes = len(train), len(test), info.num_classes
        bs = base.train.batch_size * base.train.accum_iter
        self.images_per_epoch = (self.n_train // base.train.batch_size) * base.train.batch_size
        if self.images_per_epoch < bs:
            raise CampaignError(f"{self.n_train} training images hold no batch of {bs}: lower train.batch_size")
        self.window["data"] = {"dataset": base.data.dataset, "root": str(base.data.root), "n_train": self.n_train,
                               "n_test": self.n_test, "images_per_epoch": self.images_per_epoch}
        self.window["preflight_s"] = round(time.monotonic() - t0, 2)
        self.log(f"data: {base.data.dataset} at {base.data.root}: {self.n_train} train / {self.n_test} test images, "
                 f"{self.images_per_epoch} per epoch (batch {base.train.batch_size})")
        del train, test

    def prepare_data(self) -> Path | None:
        """Unpack the carried packs (if any) into the data root; returns the root (None: the config's)."""
        pack = self.cfg.data_pack
        root = Path(self.cfg.data_root) if self.cfg.data_root else (self.work / "data" if pack else None)
        if pack is None:
            return root
        pack = Path(pack)
        missing = [f for f in PACK_FILES if not (pack / f).is_file()]
        if missing:
            raise CampaignError(
                f"the data pack {pack} lacks {missing}. Fix (here, before the GPU call): mkdir -p {pack} && cp "
                f"/work/shared/data/cifar-10-packed/* /work/shared/tools/cifar_unpack.py {pack}/ and carry it")
        folder = root / "cifar-10-batches-py"
        wanted = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        if all((folder / f).is_file() for f in wanted):
            self.log(f"data: {folder} already unpacked")
            return root
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        cmd = [sys.executable, str(pack / "cifar_unpack.py"), str(root), "--packs", str(pack), "--check"]
        self.log("unpacking CIFAR-10: " + " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=max(10.0, self.clock.remaining() - self.reserve_s))
        except subprocess.TimeoutExpired as e:
            raise CampaignError(f"unpacking the CIFAR-10 packs did not finish in {e.timeout:.0f} s") from e
        if proc.returncode != 0:
            raise CampaignError(f"unpacking the CIFAR-10 packs failed (exit {proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        self.window["unpack_s"] = round(time.monotonic() - t0, 1)
        self.log(f"data: {proc.stdout.strip()} in {self.window['unpack_s']} s")
        return root

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
            archives = self._pack(stage, stage_dir, rec)
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

    # ========================================================================================== planning
    def plan_stage(self, stage: Stage) -> tuple[dict | None, str]:
        """The stage's schedule and expected time, or (None, why) when it does not fit what is left."""
        left = self.clock.remaining() - self.reserve_s
        plan: dict = {"train": {}}
        estimate = 0.0
        rec = self.manifest.stage(stage.name)
        for spec in stage.train:
            tp, why = self.plan_training(stage, spec, left - estimate, rec)
            if tp is None:
                return None, why
            plan["train"][spec.key] = tp
            estimate += tp["expected_s"] + self.measured.export_s
        items = [(m, w) for m, w in stage.evals if not self._item_done(stage, m, w)]
        eval_s = [self.eval_estimate(w) for _, w in items]
        if stage.throughput:
            est_tp = self.cfg.throughput_estimate_s or THROUGHPUT_PRIOR_S.get(self.device.type, 60.0)
            estimate += est_tp
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

    def plan_training(self, stage: Stage, spec: TrainSpec, left: float, rec: dict) -> tuple[dict | None, str]:
        preset_cfg = self.preset_train(spec.schedule_of or spec.method)
        m = self.measured
        rate = m.img_per_s.get(spec.method, 0.0)
        overhead = m.overhead_s.get(spec.method, 0.0)
        old = (rec.get("plan") or {}).get("train", {}).get(spec.key) if rec.get("status") == "started" else None
        run_dir = self.run_dir_of(stage, spec)
        compile_on, compile_why = False, "off"
        if spec.epochs == "free":
            if old and (run_dir / "checkpoint.pt").is_file():  # resume the same schedule where it stopped
                return {**old, "resumed": True}, ""
            if spec.method in self.cfg.epochs:
                epochs, why = int(self.cfg.epochs[spec.method]), "forced (--epochs)"
                need = train_seconds(epochs, rate, self.images_per_epoch, overhead)
                if need > left:
                    self.log(f"warning: {spec.method}: the forced {epochs} epochs need ~{need:.0f} s, {left:.0f} s "
                             "are left; the watchdog will stop it (the stage then stays unfinished)")
            else:
                later = [s.share for s in self._later_free_stages(stage)]
                avail = share_of(left - self.eval_reserve(stage), stage.share, later)
                compile_on, compile_why = decide_compile(
                    self.cfg.compile, self.device.type, avail - overhead, eager_rate=rate,
                    compiled_rate=m.compiled_img_per_s.get(spec.method), compile_s=m.compile_s.get(spec.method))
                if compile_on and spec.method in m.compiled_img_per_s:
                    rate = m.compiled_img_per_s[spec.method]
                    overhead += m.compile_s[spec.method]
                elif compile_on:
                    overhead += 45.0
                cap = int(self.cfg.max_epochs.get(spec.method, preset_cfg.epochs))
                epochs = plan_epochs(avail, rate, self.images_per_epoch, overhead, cap=cap,
                                     min_epochs=self.cfg.min_epochs)
                if epochs is None:
                    return None, (f"{spec.method}: fewer than {max(1, self.cfg.min_epochs)} epoch(s) fit its "
                                  f"{avail:.0f} s share at {rate:.0f} img/s ({self.images_per_epoch} img/epoch, "
                                  f"{overhead:.0f} s fixed cost)")
                why = f"fits {avail:.0f} s at {rate:.0f} img/s (cap {cap})"
            warmup = warmup_for(epochs, preset_cfg.epochs, preset_cfg.warmup_epochs)
        else:
            fixed = self.manifest.data["fixed"].get(spec.epochs.split(":", 1)[1])
            if not fixed:
                return None, f"the schedule {spec.epochs} is not fixed yet (its first stage has not finished)"
            epochs, warmup, why = int(fixed["epochs"]), float(fixed["warmup_epochs"]), f"same as {spec.epochs[6:]}"
            if old and (run_dir / "checkpoint.pt").is_file():
                return {**old, "resumed": True}, ""
        expected = train_seconds(epochs, rate, self.images_per_epoch, overhead)
        ckpt_every = max(1, int(rate * 120.0 / preset_cfg.batch_size)) if rate > 0 else 0
        return {"epochs": epochs, "warmup_epochs": warmup, "blr": preset_cfg.blr, "batch_size": preset_cfg.batch_size,
                "forced": spec.epochs == "free" and spec.method in self.cfg.epochs,
                "compile": compile_on, "compile_why": compile_why, "why": why, "rate_img_s": round(rate, 1),
                "images_per_epoch": self.images_per_epoch, "overhead_s": round(overhead, 1),
                "expected_s": round(expected, 1), "ckpt_every": ckpt_every}, ""

    def preset_train(self, method: str):
        """The preset's training section for ``method`` (with the user's overrides)."""
        extra = {"imae.teacher": "-"} if method == "imae" else {}  # a placeholder: only the schedule is read
        return self.build_config(self.preset, method, **{**self.cfg.overrides, **extra}).train

    def _later_free_stages(self, stage: Stage) -> list[Stage]:
        names = self.selected[self.selected.index(stage.name) + 1:]
        out = []
        for n in names:
            s = self.stage_by_name(n)
            if any(t.epochs == "free" and t.method not in self.cfg.epochs for t in s.train) \
                    and not self.manifest.is_done(n):
                out.append(s)
        return out

    def eval_reserve(self, stage: Stage) -> float:
        """Time held back, while planning training, for a pending evaluation stage of this window."""
        total = 0.0
        for n in self.selected[self.selected.index(stage.name) + 1:]:
            s = self.stage_by_name(n)
            if s.itemized and not self.manifest.is_done(n) and not s.train:
                total += sum(self.eval_estimate(w) for m, w in s.evals if not self._item_done(s, m, w))
                break  # the first evaluation stage only: later ones wait for later windows
        return min(total, self.cfg.eval_share * self.cfg.budget_s)

    def eval_estimate(self, what: str) -> float:
        observed = [it["wall_s"] for rec in self.manifest.stages.values() for key, it in rec.get("items", {}).items()
                    if key.endswith(f"/{what}") and it.get("device") == self._device_name()]
        return eval_seconds(what, eval_options(self.preset, what, self.cfg.eval_extra), self.measured,
                            self.n_train, self.n_test, observed)

    # ========================================================================================== training
    def run_dir_of(self, stage: Stage, spec: TrainSpec) -> Path:
        return self.work / "runs" / f"{stage.name}-{spec.key}"

    def resolve(self, ref: str) -> Path:
        """A model reference (see :mod:`.stages`) -> a finished run directory."""
        if ref.startswith("@"):
            return self.stage_models[ref[1:]]
        if ref.startswith("untrained"):
            seed = int(ref.split(":", 1)[1]) if ":" in ref else 0
            key = f"untrained:{seed}"
            if key not in self.models:
                from ..controls import untrained_run

                self.models[key] = untrained_run(self.preset, seed=seed, runs_dir=self.work / "runs", **self.common)
            return self.models[key]
        if ref not in self.models:
            self.models[ref] = self.stored_model(ref)
        return self.models[ref]

    def stored_model(self, stage_name: str) -> Path:
        """The committed weights of a finished stage (``mae``/``imae``), verified and turned into a run dir."""
        rec = self.manifest.stage(stage_name)
        stage = self.stage_by_name(stage_name)
        spec = next(t for t in stage.train if t.weights_name)
        want = rec.get("result", {}).get("weights_sha256")
        places = [self.weights_dir / f"{spec.weights_name}.json",
                  self.work / "stages" / stage_name / "weights" / f"{spec.weights_name}.json"]
        tried = []
        for card in places:
            if not card.is_file():
                tried.append(f"{card} (absent)")
                continue
            try:
                c, _ = verify(card)
            except ImaeError as e:
                tried.append(f"{card} ({e})")
                continue
            if want and c["sha256"] != want:
                tried.append(f"{card} (sha256 {c['sha256'][:12]}..., the manifest records {want[:12]}...)")
                continue
            over = {"data.root": self.common["data.root"], "data.download": False,
                    "train.device": str(self.device)}
            if c["kind"] == "imae":
                over["imae.teacher"] = str(self.resolve(stage.train[0].teacher))
            return materialize_run(card, self.work / "models" / spec.weights_name, **over)
        raise CampaignError(
            f"stage {stage_name} is done but its weights {spec.weights_name} were not found: {'; '.join(tried)}. "
            f"Fix: collect that window's results into the repository (python -m imae campaign --collect FOLDER), "
            f"or pass --weights-dir, or delete the stage's entry in {self.manifest_path} to train it again")

    def spec_config(self, spec: TrainSpec, tp: dict, teacher: Path | None, init_from: Path | None):
        over = {**self.common, **spec.overrides, "train.seed": spec.seed, "train.epochs": tp["epochs"],
                "train.warmup_epochs": tp["warmup_epochs"], "train.compile": bool(tp["compile"]),
                "train.ckpt_every": tp["ckpt_every"], "train.blr": tp["blr"], "train.batch_size": tp["batch_size"]}
        if spec.schedule_of:
            sched = self.preset_train(spec.schedule_of)
            over.update({"train.min_lr": sched.min_lr, "train.accum_iter": sched.accum_iter})
        if teacher is not None:
            over["imae.teacher"] = str(teacher)
        if init_from is not None:
            over["train.init_from"] = str(init_from)
        return self.build_config(self.preset, spec.method, **over)

    def train_model(self, stage: Stage, spec: TrainSpec, tp: dict, stage_dir: Path) -> dict:
        from ..checkpoint import load_checkpoint
        from ..runs import read_metrics
        from ..train import pretrain

        teacher = self.resolve(spec.teacher) if spec.teacher else None
        init_from = self.resolve(spec.init_from) if spec.init_from else None
        cfg = self.spec_config(spec, tp, teacher, init_from)
        run_dir = self.run_dir_of(stage, spec)
        self.log(f"  train {stage.name}/{spec.key}: {spec.method}, {tp['epochs']} epochs (warmup "
                 f"{tp['warmup_epochs']}), {tp['why']}; compile {tp['compile']} ({tp['compile_why']})")
        t0 = time.monotonic()
        pretrain(cfg, run_dir, overwrite=True, progress=False)
        wall = time.monotonic() - t0
        ckpt = load_checkpoint(run_dir)
        recs = [r for r in read_metrics(run_dir) if "loss" in r]
        train_s = float(ckpt.get("elapsed_s", 0.0))
        images = ckpt["step"] * cfg.train.batch_size * cfg.train.accum_iter
        result = {"epochs": cfg.train.epochs, "steps": ckpt["step"], "wall_s": round(wall, 1),
                  "train_s": round(train_s, 1), "img_per_s": round(images / train_s, 1) if train_s else None,
                  "final_loss": recs[-1]["loss"] if recs else None, "fingerprint": ckpt["fingerprint"],
                  "device": self._device_name(), "compile": bool(tp["compile"])}
        with self.watchdog.hold():
            name = spec.weights_name or f"{self.preset}-{stage.name}-{spec.key}"
            folder = stage_dir / "weights" if spec.weights_name else self.work / "weights"
            extra = {"trained": result, "stage": stage.name,
                     "teacher": (Path(teacher).name if teacher else None)}
            card = save_weights(ckpt["model"], cfg, folder, name, fingerprint=ckpt["fingerprint"], extra=extra,
                                max_bytes=MAX_MODEL_BYTES)
            over = {"data.root": self.common["data.root"], "data.download": False, "train.device": str(self.device)}
            if teacher is not None:
                over["imae.teacher"] = str(teacher)
            model_dir = materialize_run(folder / f"{name}.json", self.work / "models" / name, **over)
            sub = stage_dir if len(stage.train) == 1 else stage_dir / spec.key
            sub.mkdir(parents=True, exist_ok=True)
            for f in ("config.yaml", "metrics.jsonl"):
                if (run_dir / f).is_file():
                    shutil.copy2(run_dir / f, sub / f)
        result.update({"weights": card["file"], "weights_sha256": card["sha256"], "weights_bytes": card["bytes"]})
        self.stage_models[spec.key] = model_dir
        if spec.weights_name:
            self.models[stage.name] = model_dir
        self.log(f"  {stage.name}/{spec.key}: {result['steps']} steps in {result['train_s']} s "
                 f"({result['img_per_s']} img/s), loss {result['final_loss']}, weights {card['bytes'] / 1e6:.1f} MB")
        return result

    # ======================================================================================= evaluation
    def _item_key(self, model_ref: str, what: str) -> str:
        return f"{model_ref.lstrip('@').replace(':', '-')}/{what}"

    def _item_done(self, stage: Stage, model_ref: str, what: str) -> bool:
        key = self._item_key(model_ref, what)
        done = key in self.manifest.stage(stage.name).get("items", {})
        path = self.work / "stages" / stage.name / "evals" / f"{key}.json"
        return done and (path.is_file() or (self.results_dir / stage.name / "evals" / f"{key}.json").is_file())

    def _seed_items(self, stage: Stage, stage_dir: Path) -> None:
        """An itemized stage on a new machine: bring the repository's results of its finished items, so
        they are not recomputed and the archive holds the whole stage."""
        src = self.results_dir / stage.name
        if src.is_dir():
            for p in src.rglob("*"):
                if p.is_file() and not (stage_dir / p.relative_to(src)).exists():
                    (stage_dir / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(p, stage_dir / p.relative_to(src))

    def run_evals(self, stage: Stage, stage_dir: Path, rec: dict) -> bool:
        """Run the stage's evaluations in order; False when an itemized stage ran out of time."""
        from ..metrics import evaluate

        items = rec.setdefault("items", {}) if stage.evals else {}
        for model_ref, what in stage.evals:
            key = self._item_key(model_ref, what)
            out = stage_dir / "evals" / key.split("/")[0]
            if key in items and (out / f"{what}.json").is_file():
                continue
            est = self.eval_estimate(what)
            left = self.clock.remaining() - self.reserve_s
            if stage.itemized and est > left:
                self.log(f"  {key}: needs ~{est:.0f} s, {left:.0f} s left: stopping the stage here")
                return False
            model_dir = self.resolve(model_ref)
            reference = self.resolve(stage.reference) if what in ("separability", "reconstruction") else None
            opts = eval_options(self.preset, what, self.cfg.eval_extra)
            if self.data_root is not None:
                opts.setdefault("data_root", str(self.data_root))
            t0 = time.monotonic()
            result = evaluate(model_dir, what, out=out, reference=reference, device=str(self.device), **opts)
            wall = round(time.monotonic() - t0, 2)
            with self.watchdog.hold():
                items[key] = {"wall_s": wall, "estimate_s": round(est, 1), "device": self._device_name(),
                              "summary": _summary(what, result), "options": {k: v for k, v in opts.items()
                                                                             if k != "data_root"},
                              "reference": str(reference.name) if reference is not None else None}
                self.manifest.save()
            self.log(f"  eval {key}: {wall} s (expected {est:.0f}) {items[key]['summary']}")
        return True

    # ======================================================================================= throughput
    def run_throughput(self, stage_dir: Path) -> dict:
        script = Path(self.cfg.throughput_script or repo_root() / "benchmarks" / "throughput.py")
        if not script.is_file():
            raise CampaignError(f"{script} is missing (an installed package without the repository's benchmarks/)")
        out_json = stage_dir / "throughput.json"
        cmd = [sys.executable, str(script), *throughput_args(self.preset, self.device.type, out_json,
                                                             self.cfg.throughput_args)]
        timeout = self.clock.remaining() - self.reserve_s
        self.log("  throughput: " + " ".join(cmd) + f" (timeout {timeout:.0f} s)")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=repo_root(), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            log = (e.stdout or b"") if isinstance(e.stdout, bytes) else (e.stdout or "").encode()
            log += (e.stderr or b"") if isinstance(e.stderr, bytes) else (e.stderr or "").encode()
            (stage_dir / "throughput.log").write_bytes(log[-200_000:])
            raise DeadlineReached(f"the throughput benchmark did not finish in {timeout:.0f} s") from e
        (stage_dir / "throughput.log").write_text((proc.stdout + "\n" + proc.stderr)[-200_000:])
        if proc.returncode != 0:
            raise CampaignError(f"the throughput benchmark failed (exit {proc.returncode}): "
                                f"{proc.stderr.strip()[-600:]}")
        data = json.loads(out_json.read_text())
        rows = {f"{r['method']}/{r['path']}": round(r["img_per_s"], 1) for r in data.get("rows", [])}
        self.log(f"  throughput in {time.monotonic() - t0:.0f} s on {data.get('device')}: {rows}")
        return {"device": data.get("device"), "img_per_s": rows, "wall_s": round(time.monotonic() - t0, 1)}

    # ========================================================================================== smoke
    def smoke_and_measure(self, todo: list[Stage]) -> None:
        """Smoke steps of each model a pending stage trains (fail fast), measuring throughput on the way."""
        methods = sorted({t.method for s in todo for t in s.train}, key=["mae", "imae"].index)
        if any(s.evals for s in todo) and "mae" not in methods:
            methods.insert(0, "mae")  # the evaluation rate is measured on an MAE of the preset
        t0 = time.monotonic()
        smoke_root = self.work / "smoke"
        shutil.rmtree(smoke_root, ignore_errors=True)
        runs = {}
        for method in methods:
            runs[method] = self.measure_training(method, smoke_root)
        train_s_guess = self.cfg.budget_s * 0.35
        for method in methods:
            if worth_measuring_compile(self.device.type, self.cfg.compile, train_s_guess):
                self.measure_training(method, smoke_root, compile=True)
        if "mae" in runs:
            self.measure_eval_and_export(runs["mae"], smoke_root)
        m = self.measured
        self.window["smoke_s"] = round(time.monotonic() - t0, 1)
        self.log(f"measured in {self.window['smoke_s']} s: training {({k: round(v) for k, v in m.img_per_s.items()})} "
                 f"img/s, stage overhead {({k: round(v, 1) for k, v in m.overhead_s.items()})} s, compiled "
                 f"{m.compiled_img_per_s or '-'} (compile {m.compile_s or '-'} s), eval forwards "
                 f"{m.fwd_img_per_s:.0f} img/s, eval load {m.eval_fixed_s:.1f} s, export {m.export_s:.2f} s")

    def measure_training(self, method: str, smoke_root: Path, *, compile: bool = False) -> Path:
        from ..checkpoint import load_checkpoint
        from ..runs import read_metrics
        from ..train import pretrain

        base = self.build_config(self.preset, "mae", **self.common)  # batch and data (the method's schedule below)
        if method != "mae":
            base = self.build_config(self.preset, method, **{**self.common, "imae.teacher": "-"})
        bs = base.train.batch_size
        per_class = math.ceil(self.cfg.smoke_steps * bs / self.n_classes)
        if base.data.subset_per_class:
            per_class = min(per_class, base.data.subset_per_class)
        over = {**self.common, "data.subset_per_class": per_class, "train.epochs": self.cfg.smoke_epochs,
                "train.warmup_epochs": 1.0, "train.log_every": 10**6, "train.ckpt_every": 10**9,
                "train.compile": compile}
        if method == "mae":
            over["model.norm_pix_loss"] = True
        else:
            over["imae.teacher"] = str(self.resolve("untrained"))
        label = f"{method}{' + compile' if compile else ''}"
        run_dir = smoke_root / (method + ("-compiled" if compile else ""))
        t0 = time.monotonic()
        try:
            cfg = self.build_config(self.preset, method, **over)
            pretrain(cfg, run_dir, overwrite=True, resume=False, progress=False)
            ckpt = load_checkpoint(run_dir)
            if not ckpt.get("finished"):
                raise CampaignError("the smoke run did not finish")
        except (DeadlineReached, KeyboardInterrupt):
            raise
        except Exception as e:
            arch = f"{base.model.embed_dim}-d x {base.model.depth} blocks, patch {base.model.patch_size}"
            raise CampaignError(
                f"smoke steps of {label} ({self.preset} preset, {arch}, batch {bs}) failed on "
                f"{self._device_name()}: {type(e).__name__}: {e}. Nothing was trained; fix this before spending "
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
            self.measured.compiled_img_per_s[method] = steady
            self.measured.compile_s[method] = max(0.0, overhead - self.measured.overhead_s.get(method, 0.0))
        else:
            self.measured.img_per_s[method] = steady
            self.measured.overhead_s[method] = overhead
        self.log(f"smoke {label}: {ckpt['step']} steps of {bs} in {wall:.1f} s, loss {recs[-1].get('loss'):.4f}, "
                 f"steady {steady:.0f} img/s (epochs: {', '.join(f'{r:.0f}' for r in rates)}), fixed cost {overhead:.1f} s")
        return run_dir

    def measure_eval_and_export(self, mae_run: Path, smoke_root: Path) -> None:
        torch = self.torch
        from ..checkpoint import load_checkpoint
        from ..config import RunConfig
        from ..metrics.features import autocast, load_eval_data
        from ..metrics.loading import load_model

        t0 = time.monotonic()
        lm = load_model(mae_run, device=self.device)
        load_eval_data(lm.config, data_root=str(self.data_root) if self.data_root else None)
        self.measured.eval_fixed_s = time.monotonic() - t0
        bs = eval_options(self.preset, "knn", self.cfg.eval_extra).get("batch_size", 256)
        size = lm.config.model.img_size
        x = torch.randn(bs, lm.config.model.in_chans, size, size, device=self.device)
        n, t_run = 0, 0.0
        with torch.no_grad(), autocast(self.device):
            lm.mae.forward_features(x)
            self._sync()
            t1 = time.monotonic()
            while n < 50 and (time.monotonic() - t1) < 1.0:
                lm.mae.forward_features(x)
                n += 1
            self._sync()
            t_run = time.monotonic() - t1
        self.measured.fwd_img_per_s = n * bs / max(t_run, 1e-9)
        del lm
        t0 = time.monotonic()
        ckpt = load_checkpoint(mae_run)
        cfg = RunConfig.from_dict(ckpt["config"])
        folder = smoke_root / "export"
        card = save_weights(ckpt["model"], cfg, folder, "smoke-mae", fingerprint=ckpt["fingerprint"])
        verify(folder / "smoke-mae.json")
        (smoke_root / "pack-test").mkdir(parents=True, exist_ok=True)
        Packer(smoke_root / "pack-test").pack("smoke", folder)
        self.measured.export_s = time.monotonic() - t0
        if card["bytes"] > MAX_MODEL_BYTES:  # pragma: no cover - save_weights refuses first
            raise CampaignError("exported weights are over the size limit")

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


# ============================================================================================== helpers
def _summary(what: str, result: dict) -> dict:
    """The headline numbers of an evaluation, for the log and the manifest."""
    try:
        if what in ("knn", "linear-probe"):
            return {p: round(100 * a, 2) for p, a in result["accuracy"].items()}
        if what == "finetune":
            return {"accuracy": round(100 * result["accuracy"], 2)}
        if what == "separability":
            alphas = result["alphas"]
            k = min(range(len(alphas)), key=lambda i: abs(alphas[i] - 0.3))
            return {f"ls_sub_{p}@{alphas[k]}": round(v["sub"]["r2"][k], 4) for p, v in result["ridge"].items()}
        if what == "semantics":
            alphas = result["alphas"]
            k = min(range(len(alphas)), key=lambda i: abs(alphas[i] - 0.3))
            return {f"ds_sub_{p}@{alphas[k]}": round(v["sub"][k], 4) for p, v in result["accuracy"].items()}
        if what == "reconstruction":
            key = "imae" if result.get("imae") else "mae"
            return {f"psnr_masked_sub@{result['alphas'][0]}": round(result[key]["sub"]["psnr_masked"][0], 2)}
    except (KeyError, IndexError, TypeError):
        pass
    return {}


def throughput_args(preset: str, device_type: str, out_json, extra=()) -> list[str]:
    """The arguments the campaign gives ``benchmarks/throughput.py``: faithful, fast and (on CUDA)
    fast+compile for MAE and i-MAE, results as JSON."""
    args = ["--preset", preset, "--device", device_type, "--out", str(out_json)]
    if device_type == "cuda":
        args.append("--compile")
    return args + [str(a) for a in extra]


def versions(device) -> dict:
    import numpy
    import safetensors
    import timm
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
           "numpy": numpy.__version__, "safetensors": safetensors.__version__, "cuda": torch.version.cuda,
           "device": str(device)}
    for mod in ("torchvision", "PIL"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # optional: only the unpacking needs Pillow
            out[mod] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update({"device_name": props.name, "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1), "bf16": torch.cuda.is_bf16_supported()})
    else:
        out["threads"] = torch.get_num_threads()
    return out


def check_imports(*, need_benchmarks: bool) -> None:
    """Everything the stages import, imported now: a missing package fails before anything trains."""
    mods = ["imae.models", "imae.train", "imae.metrics", "imae.controls", "imae.pretrained", "safetensors.torch",
            "timm", "yaml"]
    if need_benchmarks:
        mods.append("benchmarks.paths")
    missing = []
    for mod in mods:
        try:
            __import__(mod)
        except Exception as e:  # ImportError, or an error raised while importing
            missing.append(f"{mod} ({type(e).__name__}: {e})")
    if missing:
        raise CampaignError(f"cannot import {missing}. Fix: run from the repository root with the python that has "
                            "torch/timm/safetensors; a missing package can be carried as a wheel "
                            "(see /work/.library/device/README.md)")


def run_campaign(cfg: CampaignConfig) -> dict:
    """Run one window; see :class:`Campaign`."""
    return Campaign(cfg).run()


__all__ = ["CampaignConfig", "Campaign", "run_campaign", "versions", "check_imports"]
