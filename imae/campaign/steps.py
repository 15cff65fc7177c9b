"""The work of a stage: train a model, export and re-load it, run evaluations, run the throughput benchmark.

Every trained model is exported as fp16 safetensors + card (:mod:`imae.pretrained`) and turned back into a
run directory from those stored weights, so downstream steps (the i-MAE's teacher, every evaluation) use
exactly what a later window (which carries only the stored weights) and ``imae.load_pretrained`` use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .. import evaluations
from ..errors import ImaeError
from ..pretrained import MAX_MODEL_BYTES, materialize_run, repo_root, save_weights, verify
from .manifest import CampaignError
from .planner import eval_fits
from .stages import Stage, TrainSpec, eval_options
from .watchdog import DeadlineReached


class StepsMixin:
    """:class:`~imae.campaign.runner.Campaign`'s stage work."""

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
        try:
            pretrain(cfg, run_dir, overwrite=True, progress=False)
        finally:
            wall = time.monotonic() - t0
            if spec.epochs == "free":
                self.free_train_s += wall
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
            extra = {"trained": result, "stage": stage.name, "teacher": Path(teacher).name if teacher else None,
                     "init_from": Path(init_from).name if init_from else None}
            if ckpt.get("teacher"):  # what training recorded of its teacher, so later windows can verify it
                extra["teacher_record"] = {k: ckpt["teacher"].get(k) for k in ("fingerprint", "step")}
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
        from ..runs import read_run_config

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
            reference = self.resolve(stage.reference) if evaluations.get(what).reference != "never" else None
            opts = eval_options(self.preset, what, self.cfg.eval_extra)
            if self.data_root is not None:
                opts.setdefault("data_root", str(self.data_root))
            pin = {}
            if reference is not None:  # every model of the stage is scored against this one reference
                pin["reference_fingerprint"] = read_run_config(reference)["fingerprint"]
            t0 = time.monotonic()
            result = evaluate(model_dir, what, out=out, reference=reference, device=str(self.device), **pin, **opts)
            wall = round(time.monotonic() - t0, 2)
            with self.watchdog.hold():
                items[key] = {"wall_s": wall, "estimate_s": round(est, 1), "device": self._device_name(),
                              "summary": _summary(what, result), "options": {k: v for k, v in opts.items()
                                                                             if k != "data_root"},
                              "reference": str(reference.name) if reference is not None else None}
                if eval_fits(what, opts):  # the planner times fitting evaluations by optimiser
                    from ..metrics.probes import OPTIMIZER

                    items[key]["optimizer"] = OPTIMIZER
                self.manifest.save()
            self.log(f"  eval {key}: {wall} s (expected {est:.0f}) {items[key]['summary']}")
        return True

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


def throughput_args(preset: str, device_type: str, out_json, extra=()) -> list[str]:
    """The arguments the campaign gives ``benchmarks/throughput.py``: faithful, fast and (on CUDA)
    fast+compile for MAE and i-MAE, results as JSON."""
    args = ["--preset", preset, "--device", device_type, "--out", str(out_json)]
    if device_type == "cuda":
        args += ["--compile", "--profile", "5"]  # where a step's device time goes, for the next speed-up
    return args + [str(a) for a in extra]


def _summary(what: str, result: dict) -> dict:
    """The headline numbers of an evaluation, for the log and the manifest (its registered ``summary``)."""
    from .. import evaluations

    ev = evaluations.EVALUATIONS.get(what)
    try:
        return ev.summary(result) if ev is not None and ev.summary else {}
    except (KeyError, IndexError, TypeError):
        return {}

