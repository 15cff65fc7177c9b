"""Planning a stage just before it starts: its schedule and expected time, from the window's measurements.

Free-epoch stages (the first teacher and i-MAE) split the training time left by their shares, after the time
held back for the window's evaluation stage; fixed-epoch stages reuse the schedule the manifest fixed; a
stage whose expected time exceeds what is left is not started (forced epochs excepted: the watchdog stops
them). The arithmetic lives in :mod:`.planner`.
"""

from __future__ import annotations

from .planner import (PRIOR_COMPILE_S, decide_compile, eval_fits, eval_seconds, plan_epochs, share_of, train_seconds,
                      warmup_for)
from .stages import Stage, TrainSpec, eval_options

THROUGHPUT_PRIOR_S = {"cuda": 240.0, "cpu": 60.0}  # the benchmark with compile, both methods (a prior)


class ScheduleMixin:
    """:class:`~imae.campaign.runner.Campaign`'s planning."""

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
                cap_s = self.cfg.train_fraction * self.cfg.budget_s - self.free_train_s
                avail = share_of(min(left - self.eval_reserve(stage), cap_s), stage.share, later)
                compile_on, compile_why = decide_compile(
                    self.cfg.compile, self.device.type, avail - overhead, eager_rate=rate,
                    compiled_rate=m.compiled_img_per_s.get(spec.method), compile_s=m.compile_s.get(spec.method))
                if compile_on and spec.method in m.compiled_img_per_s:
                    rate = m.compiled_img_per_s[spec.method]
                    overhead += m.compile_s[spec.method]
                elif compile_on:
                    overhead += PRIOR_COMPILE_S
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
        from ..metrics.probes import OPTIMIZER

        opts = eval_options(self.preset, what, self.cfg.eval_extra)
        fits = eval_fits(what, opts) > 0  # timed with today's classifier optimiser only (probes.OPTIMIZER)
        observed = [it["wall_s"] for rec in self.manifest.stages.values() for key, it in rec.get("items", {}).items()
                    if key.endswith(f"/{what}") and it.get("device") == self._device_name()
                    and (not fits or it.get("optimizer") == OPTIMIZER)]
        return eval_seconds(what, opts, self.measured, self.n_train, self.n_test, observed)
