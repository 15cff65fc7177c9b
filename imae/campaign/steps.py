"""The work of a stage: train its models, run its evaluations or the throughput benchmark, pack what it wrote.

:func:`run_stage` runs one stage of a window (:class:`~imae.campaign.state.Window`) from plan to archive.
Every trained model is exported as fp16 safetensors + card (:mod:`imae.pretrained`) and turned back into a
run directory from those stored weights, so downstream steps (the i-MAE's teacher, every evaluation) use
exactly what a later window (which reads only the stored weights) and ``imae.load_pretrained`` use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .. import evaluations
from ..errors import ImaeError, TrainingInterrupted
from ..paths import repo_root
from ..pretrained import materialize_run, save_weights, sha256_file, verify
from .manifest import CampaignError
from .planner import eval_estimate, eval_fits, plan_stage, preset_train, run_dir_of
from .stages import Stage, TrainSpec, eval_options
from .state import Window, inputs_of, item_key
from .watchdog import DeadlineReached


# ================================================================================================= one stage
def run_stage(w: Window, stage: Stage) -> None:
    """Plan the stage, run it, archive its folder and record it in the manifest. A stage that fails is recorded
    as failed and the window goes on; the deadline (or a stop) is recorded, then raised."""
    name = stage.name
    missing = [n for n in stage.needs if not w.manifest.is_done(n)]
    if missing:
        skip(w, stage, f"needs {missing} done first")
        return
    plan, why = plan_stage(w, stage)
    if plan is None:
        skip(w, stage, why)
        return
    rec = w.manifest.stage(name)
    inputs = inputs_of(w, stage)
    resuming = rec.get("status") == "started" and rec.get("plan", {}).get("train") == plan.get("train") \
        and rec.get("inputs") == inputs
    stage_dir = w.work / "stages" / name
    if stage.itemized and rec.get("inputs") not in (None, inputs):
        rec.pop("items", None)  # computed from other models: start over
        shutil.rmtree(stage_dir, ignore_errors=True)
    elif not stage.itemized and not resuming:
        rec.pop("items", None)
        shutil.rmtree(stage_dir, ignore_errors=True)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if stage.itemized:
        seed_items(w, stage, stage_dir)
    rec = w.manifest.start(name, window=w.record["id"], plan=plan, inputs=inputs)
    w.manifest.save()
    w.log(f"stage {name} ({stage.why}): plan {json.dumps(plan.get('train') or {})}, "
          f"expected {plan['estimate_s']:.0f} s of {w.clock.remaining():.0f} s left")
    t0 = time.monotonic()
    w.stage_models = {}
    result: dict = {}
    try:
        for spec in stage.train:
            result[spec.key] = train_model(w, stage, spec, plan["train"][spec.key], stage_dir)
        complete = run_evals(w, stage, stage_dir, rec)
        if stage.throughput:
            result["throughput"] = run_throughput(w, stage_dir)
    except (DeadlineReached, TrainingInterrupted) as e:
        rec["interrupted"] = {"after_s": round(time.monotonic() - t0, 1), "why": str(e)[:300]}
        w.record["stages"][name] = "interrupted by the deadline"
        if stage.itemized and rec.get("items"):
            with w.watchdog.hold():
                pack_stage(w, stage, stage_dir, rec)
        w.manifest.save()
        raise
    except Exception as e:  # a stage failing must not cost the window's other stages
        msg = f"{type(e).__name__}: {e}"
        w.log(f"stage {name} failed: {msg}\n{traceback.format_exc(limit=8)}")
        fail(w, stage, msg)
        if stage.itemized and rec.get("items"):
            with w.watchdog.hold():
                pack_stage(w, stage, stage_dir, rec)
        w.manifest.save()
        return
    wall = round(time.monotonic() - t0, 1)
    if not complete:  # itemized stage: the rest waits for the next window
        with w.watchdog.hold():
            pack_stage(w, stage, stage_dir, rec)
            w.record["stages"][name] = f"partial: {len(rec.get('items', {}))}/{len(stage.evals)} evaluations"
            w.manifest.save()
        w.log(f"stage {name}: {w.record['stages'][name]} in {wall} s; the rest does not fit this window")
        return
    with w.watchdog.hold():
        summary = summarize(w, stage, result, wall)
        (stage_dir / "stage.json").write_text(json.dumps({"stage": name, "plan": plan, "result": summary},
                                                         indent=1) + "\n")
        try:
            archives = pack_stage(w, stage, stage_dir, rec)
        except ImaeError as e:  # the output cannot hold it: recorded as the stage's failure, loudly
            w.log(f"stage {name} failed: {e}")
            fail(w, stage, str(e))
            w.manifest.save()
            return
        files = {p.relative_to(stage_dir).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in sorted(stage_dir.rglob("*")) if p.is_file() and not p.name.startswith(".")}
        w.manifest.finish(name, result=summary, files=files, wall_s=wall, device=w.device_name)
        for spec in stage.train:
            if spec.epochs == "free" and spec.method not in w.manifest.data["fixed"]:
                p = plan["train"][spec.key]
                w.manifest.data["fixed"][spec.method] = {
                    k: p[k] for k in ("epochs", "warmup_epochs", "blr", "batch_size")} | {"from_stage": name}
        w.record["stages"][name] = "done"
        w.manifest.save()
    sizes = ", ".join(f"{a} ({w.record['files'][a]['bytes'] / 2**20:.2f} MiB)" for a in archives)
    w.log(f"stage {name} done in {wall} s -> {sizes}")


def skip(w: Window, stage: Stage, why: str) -> None:
    w.record["stages"][stage.name] = f"not started: {why}"
    w.log(f"stage {stage.name} not started: {why}")


def fail(w: Window, stage: Stage, msg: str) -> None:
    w.manifest.fail(stage.name, msg[:2000])
    w.record["stages"][stage.name] = f"failed: {msg[:200]}"
    w.failures.append(f"{stage.name}: {msg[:300]}")


def pack_stage(w: Window, stage: Stage, stage_dir: Path, rec: dict) -> list[str]:
    """Archive the stage's folder into the output folder; the manifest lists the archives and their sha256."""
    t0 = time.monotonic()
    try:
        names = w.packer.pack(stage.name, stage_dir)
        rec["archives"] = names
        w.record["files"] = w.packer.catalog()
    finally:
        w.spent["pack"] += time.monotonic() - t0
    return names


def summarize(w: Window, stage: Stage, result: dict, wall: float) -> dict:
    out = {"wall_s": wall, "device": w.device_name}
    for spec in stage.train:
        r = result[spec.key]
        out.update({f"{spec.key}_{k}": v for k, v in r.items()} if len(stage.train) > 1 else r)
    if "throughput" in result:
        out["throughput"] = result["throughput"]
    return out


# ==================================================================================================== models
def resolve(w: Window, ref: str) -> Path:
    """A model reference (see :mod:`.stages`) -> a finished run directory."""
    if ref.startswith("@"):
        return w.stage_models[ref[1:]]
    if ref.startswith("untrained"):
        seed = int(ref.split(":", 1)[1]) if ":" in ref else 0
        key = f"untrained:{seed}"
        if key not in w.models:
            from ..controls import untrained_run

            w.models[key] = untrained_run(w.preset, seed=seed, runs_dir=w.work / "runs", **w.common)
        return w.models[key]
    if ref not in w.models:
        w.models[ref] = stored_model(w, ref)
    return w.models[ref]


def stored_model(w: Window, stage_name: str) -> Path:
    """The committed weights of a finished stage (``mae``/``imae``), verified and turned into a run dir."""
    rec = w.manifest.stage(stage_name)
    stage = w.stage(stage_name)
    spec = next(t for t in stage.train if t.weights_name)
    want = rec.get("result", {}).get("weights_sha256")
    places = [w.weights_dir / f"{spec.weights_name}.json",
              w.work / "stages" / stage_name / "weights" / f"{spec.weights_name}.json"]
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
        over = {"data.root": w.common["data.root"], "data.download": False, "train.device": str(w.device)}
        if c["kind"] == "imae":
            over["imae.teacher"] = str(resolve(w, stage.train[0].teacher))
        return materialize_run(card, w.work / "models" / spec.weights_name, **over)
    raise CampaignError(
        f"stage {stage_name} is done but its weights {spec.weights_name} were not found: {'; '.join(tried)}. "
        f"Fix: collect that window's results into the repository (python -m imae campaign --collect FOLDER), "
        f"or pass --weights-dir, or delete the stage's entry in {w.manifest_path} to train it again")


def spec_config(w: Window, spec: TrainSpec, tp: dict, teacher: Path | None, init_from: Path | None):
    """The run configuration of one model of a stage, on its planned schedule."""
    from ..config import build_config

    over = {**w.common, **spec.overrides, "train.seed": spec.seed, "train.epochs": tp["epochs"],
            "train.warmup_epochs": tp["warmup_epochs"], "train.compile": bool(tp["compile"]),
            "train.ckpt_every": tp["ckpt_every"], "train.blr": tp["blr"], "train.batch_size": tp["batch_size"]}
    if spec.schedule_of:
        sched = preset_train(w, spec.schedule_of)
        over.update({"train.min_lr": sched.min_lr, "train.accum_iter": sched.accum_iter})
    if teacher is not None:
        over["imae.teacher"] = str(teacher)
    if init_from is not None:
        over["train.init_from"] = str(init_from)
    return build_config(w.preset, spec.method, **over)


def train_model(w: Window, stage: Stage, spec: TrainSpec, tp: dict, stage_dir: Path) -> dict:
    """Train one model of the stage, store its fp16 weights and reload them as the run later steps use."""
    from ..checkpoint import load_checkpoint
    from ..runs import read_metrics
    from ..train import pretrain

    teacher = resolve(w, spec.teacher) if spec.teacher else None
    init_from = resolve(w, spec.init_from) if spec.init_from else None
    cfg = spec_config(w, spec, tp, teacher, init_from)
    run_dir = run_dir_of(w, stage, spec)
    w.log(f"  train {stage.name}/{spec.key}: {spec.method}, {tp['epochs']} epochs (warmup "
          f"{tp['warmup_epochs']}), {tp['why']}; compile {tp['compile']} ({tp['compile_why']})")
    t0 = time.monotonic()
    try:
        pretrain(cfg, run_dir, overwrite=True, progress=False)
    finally:
        wall = time.monotonic() - t0
        w.spent["training"] += wall  # an interrupted training counts as training; a finished one is split below
        if spec.epochs == "free":
            w.free_train_s += wall
    ckpt = load_checkpoint(run_dir)
    recs = [r for r in read_metrics(run_dir) if "loss" in r]
    train_s = float(ckpt.get("elapsed_s", 0.0))
    w.spent["training"] -= max(0.0, wall - train_s)  # its start-up (compile, warm-up) beyond steady training
    w.spent["startup"] += max(0.0, wall - train_s)
    t_export = time.monotonic()
    images = ckpt["step"] * cfg.train.batch_size * cfg.train.accum_iter
    result = {"epochs": cfg.train.epochs, "steps": ckpt["step"], "wall_s": round(wall, 1),
              "train_s": round(train_s, 1), "img_per_s": round(images / train_s, 1) if train_s else None,
              "final_loss": recs[-1]["loss"] if recs else None, "fingerprint": ckpt["fingerprint"],
              "device": w.device_name, "compile": bool(tp["compile"])}
    with w.watchdog.hold():
        name = spec.weights_name or f"{w.preset}-{stage.name}-{spec.key}"
        folder = stage_dir / "weights" if spec.weights_name else w.work / "weights"
        extra = {"trained": result, "stage": stage.name, "teacher": Path(teacher).name if teacher else None,
                 "init_from": Path(init_from).name if init_from else None}
        if ckpt.get("teacher"):  # what training recorded of its teacher, so later windows can verify it
            extra["teacher_record"] = {k: ckpt["teacher"].get(k) for k in ("fingerprint", "step")}
        card = save_weights(ckpt["model"], cfg, folder, name, fingerprint=ckpt["fingerprint"], extra=extra,
                            max_bytes=w.cfg.max_model_bytes)
        over = {"data.root": w.common["data.root"], "data.download": False, "train.device": str(w.device)}
        if teacher is not None:
            over["imae.teacher"] = str(teacher)
        model_dir = materialize_run(folder / f"{name}.json", w.work / "models" / name, **over)
        sub = stage_dir if len(stage.train) == 1 else stage_dir / spec.key
        sub.mkdir(parents=True, exist_ok=True)
        for f in ("config.yaml", "metrics.jsonl"):
            if (run_dir / f).is_file():
                shutil.copy2(run_dir / f, sub / f)
    w.spent["pack"] += time.monotonic() - t_export
    result.update({"weights": card["file"], "weights_sha256": card["sha256"], "weights_bytes": card["bytes"]})
    w.stage_models[spec.key] = model_dir
    if spec.weights_name:
        w.models[stage.name] = model_dir
    w.log(f"  {stage.name}/{spec.key}: {result['steps']} steps in {result['train_s']} s "
          f"({result['img_per_s']} img/s), loss {result['final_loss']}, weights {card['bytes'] / 1e6:.1f} MB")
    return result


# =============================================================================================== evaluations
def seed_items(w: Window, stage: Stage, stage_dir: Path) -> None:
    """An itemized stage on a new machine: bring the repository's results of its finished items, so they are
    not recomputed and the archive holds the whole stage."""
    src = w.results_dir / stage.name
    if src.is_dir():
        for p in src.rglob("*"):
            if p.is_file() and not (stage_dir / p.relative_to(src)).exists():
                (stage_dir / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, stage_dir / p.relative_to(src))


def run_evals(w: Window, stage: Stage, stage_dir: Path, rec: dict) -> bool:
    """Run the stage's evaluations in order; False when an itemized stage ran out of time."""
    from ..metrics import evaluate
    from ..metrics.finetune import CLASSIFIER_FILE
    from ..runs import read_run_config

    items = rec.setdefault("items", {}) if stage.evals else {}
    for model_ref, what in stage.evals:
        key = item_key(model_ref, what)
        out = stage_dir / "evals" / key.split("/")[0]
        if key in items and (out / f"{what}.json").is_file():
            continue
        est = eval_estimate(w, what)
        left = w.clock.remaining() - w.reserve_s
        if stage.itemized and est > left:
            w.log(f"  {key}: needs ~{est:.0f} s, {left:.0f} s left: stopping the stage here")
            return False
        model_dir = resolve(w, model_ref)
        reference = resolve(w, stage.reference) if evaluations.get(what).reference != "never" else None
        opts = eval_options(w.preset, what, w.cfg.eval_extra)
        if w.data_root is not None:
            opts.setdefault("data_root", str(w.data_root))
        pin = {}
        if reference is not None:  # every model of the stage is scored against this one reference
            pin["reference_fingerprint"] = read_run_config(reference)["fingerprint"]
        t0 = time.monotonic()
        result = evaluate(model_dir, what, out=out, reference=reference, device=str(w.device), **pin, **opts)
        wall = round(time.monotonic() - t0, 2)
        w.spent["evaluation"] += wall
        # a fine-tuned classifier (ViT-T: 22 MB in float32) stays on the machine: a window brings results back
        (out / CLASSIFIER_FILE).unlink(missing_ok=True)
        with w.watchdog.hold():
            items[key] = {"wall_s": wall, "estimate_s": round(est, 1), "device": w.device_name,
                          "summary": _summary(what, result), "options": {k: v for k, v in opts.items()
                                                                         if k != "data_root"},
                          "reference": str(reference.name) if reference is not None else None}
            if eval_fits(what, opts):  # the planner times fitting evaluations by optimiser
                from ..metrics.probes import OPTIMIZER

                items[key]["optimizer"] = OPTIMIZER
            w.manifest.save()
        w.log(f"  eval {key}: {wall} s (expected {est:.0f}) {items[key]['summary']}")
    return True


def _summary(what: str, result: dict) -> dict:
    """The headline numbers of an evaluation, for the log and the manifest (its registered ``summary``)."""
    ev = evaluations.EVALUATIONS.get(what)
    try:
        return ev.summary(result) if ev is not None and ev.summary else {}
    except (KeyError, IndexError, TypeError):
        return {}


# ================================================================================================ throughput
def run_throughput(w: Window, stage_dir: Path) -> dict:
    """``benchmarks/throughput.py`` in a subprocess, stopped at the deadline; its table as the stage's result."""
    script = Path(w.cfg.throughput_script or repo_root() / "benchmarks" / "throughput.py")
    if not script.is_file():
        raise CampaignError(f"{script} is missing (an installed package without the repository's benchmarks/)")
    out_json = stage_dir / "throughput.json"
    cmd = [sys.executable, str(script), *throughput_args(w.preset, w.device.type, out_json, w.cfg.throughput_args)]
    timeout = w.clock.remaining() - w.reserve_s
    w.log("  throughput: " + " ".join(cmd) + f" (timeout {timeout:.0f} s)")
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
    w.spent["benchmark"] += time.monotonic() - t0
    w.log(f"  throughput in {time.monotonic() - t0:.0f} s on {data.get('device')}: {rows}")
    return {"device": data.get("device"), "img_per_s": rows, "wall_s": round(time.monotonic() - t0, 1)}


def throughput_args(preset: str, device_type: str, out_json, extra=()) -> list[str]:
    """The arguments the campaign gives ``benchmarks/throughput.py``: faithful, fast and (on CUDA)
    fast+compile for MAE and i-MAE, results as JSON."""
    args = ["--preset", preset, "--device", device_type, "--out", str(out_json)]
    if device_type == "cuda":
        args += ["--compile", "--profile", "5"]  # where a step's device time goes, for the next speed-up
    return args + [str(a) for a in extra]


__all__ = ["fail", "pack_stage", "resolve", "run_evals", "run_stage", "run_throughput", "skip", "stored_model",
           "summarize", "throughput_args", "train_model"]
