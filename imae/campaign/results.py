"""The stored results of a GPU campaign, read on any machine: what the book's paper-scale chapter renders.

Everything here reads ``campaign/<preset>/`` (the manifest, ``results/<stage>/...``, ``weights/``) as
:func:`imae.campaign.collect.collect` left it; nothing trains or evaluates. ::

    from imae.campaign.results import load_campaign
    c = load_campaign("cifar")
    c.evaluations("knn")       # {"MAE": [result], "i-MAE": [result], "untrained": [result]} for imae.comparison
    c.stage_table()            # one row per stage: status, epochs, wall time, device
    c.throughput()             # the throughput benchmark's rows, or None

A missing campaign folder is an error naming the fix; a stage or evaluation not yet run is simply absent
(the chapter says what is pending).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..errors import ImaeError
from ..pretrained import repo_root

# Model names in the campaign's evaluation stage -> the labels imae.comparison pairs (DIFFERENCES).
LABELS = {"mae": "MAE", "imae": "i-MAE", "mae-continued": "MAE continued", "untrained": "untrained"}


class CampaignResults:
    """One campaign folder (``campaign/<preset>``) opened read-only."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        mpath = self.folder / "manifest.json"
        if not mpath.is_file():
            raise ImaeError(f"{self.folder} holds no manifest.json: no GPU campaign results are stored there. Fix: "
                            "run a window (campaign/README.md) and `python -m imae campaign --collect FOLDER`, or "
                            "point to the folder that holds them")
        self.manifest = json.loads(mpath.read_text())
        self.preset = self.manifest.get("preset")

    # ------------------------------------------------------------------------------------------ stages
    def stage(self, name: str) -> dict:
        return self.manifest.get("stages", {}).get(name, {})

    def done(self, name: str) -> bool:
        return self.stage(name).get("status") == "done"

    def epochs(self, stage: str) -> dict[str, int]:
        """{method: epochs} the planner chose for a training stage (empty when it has not run)."""
        return {m: p["epochs"] for m, p in self.stage(stage).get("plan", {}).get("train", {}).items()}

    def devices(self) -> list[str]:
        """The devices the windows ran on, in order, each once."""
        return list(dict.fromkeys(w.get("device", "?") for w in self.manifest.get("windows", [])))

    def stage_table(self) -> pd.DataFrame:
        """One row per stage that ran (done, started or partial): status, epochs, wall time, img/s, device."""
        rows = []
        for name, rec in self.manifest.get("stages", {}).items():
            status = rec.get("status", "pending")
            if status == "pending":
                continue
            res = rec.get("result", {})
            items = rec.get("items", {})
            epochs = ", ".join(f"{m} {e}" for m, e in self.epochs(name).items())
            wall = res.get("wall_s") or (sum(i.get("wall_s", 0) for i in items.values()) if items else None)
            rows.append({"stage": name, "status": status + (f" ({len(items)} evaluations)" if items else ""),
                         "epochs": epochs, "wall s": None if wall is None else round(float(wall), 1),
                         "img/s (incl. compile)": res.get("img_per_s"), "device": rec.get("device") or
                         next((i.get("device") for i in items.values() if i.get("device")), "")})
        return pd.DataFrame(rows, columns=["stage", "status", "epochs", "wall s", "img/s (incl. compile)", "device"])

    def pending(self) -> list[tuple[str, str]]:
        """[(stage, what it is)] for every stage of the campaign not done yet, in the campaign's order."""
        from .stages import default_stages

        return [(s.name, s.why) for s in default_stages(self.preset or "cifar") if not self.done(s.name)]

    # ----------------------------------------------------------------------------------------- results
    def run_dir(self, stage: str) -> Path:
        """``results/<stage>``: the stage's config.yaml and metrics.jsonl (a run folder for imae.plots)."""
        path = self.folder / "results" / stage
        if not (path / "metrics.jsonl").is_file():
            raise ImaeError(f"{path} holds no metrics.jsonl: stage {stage!r} has not come back from a GPU window")
        return path

    def seeds(self) -> list[int]:
        """Training seeds with results: 0 (stages ``mae``/``imae``/``eval``) and each ``seed<k>`` stage done."""
        from .stages import default_stages

        extra = [int(st.name[4:]) for st in default_stages(self.preset or "cifar")
                 if st.name.startswith("seed") and st.name[4:].isdigit() and self.done(st.name)]
        return [0, *extra]

    def variant(self, stage: str, what: str) -> dict | None:
        """The ``what`` result of the one model a variant stage trains (``imae-sp0``, ``ablation-*``,
        ``mae-continued``), or None before it came back."""
        return self._load(stage, stage, what) if self.done(stage) else None

    def _load(self, stage: str, model: str, what: str) -> dict | None:
        from ..experiments import load_result

        f = self.folder / "results" / stage / "evals" / model / f"{what}.json"
        return load_result(f) if f.is_file() else None

    def evaluations(self, what: str, *, stage: str = "eval", seeds: bool = False) -> dict[str, list[dict]]:
        """{label: [result per training seed]} shaped for :mod:`imae.comparison`.

        ``seeds=False`` (default): training seed 0, every model that has ``what``: the MAE, the i-MAE and the
        untrained encoder (stage ``stage``) and the equal-compute MAE (stage ``mae-continued``), one result each.
        ``seeds=True``: every training seed with results (:meth:`seeds`; seed k from stage ``seed<k>``, where
        the MAE, the i-MAE and that seed's untrained encoder were trained and scored again), keeping only the
        models that have ``what`` at every seed, so that seeds pair one to one.
        """
        from .. import evaluations as registry

        out: dict[str, list[dict]] = {}
        for model, label in LABELS.items():
            src = "mae-continued" if model == "mae-continued" else stage
            r = self._load(src, model, what)
            if r is not None:
                out[label] = [r]
        # seed stages score against the seed-0 teacher (an independent reference, see independent()), so a
        # metric with a reference keeps seed 0 only here: references are never mixed across seeds
        if not seeds or registry.get(what).reference != "never":
            return out
        trained = self.seeds()
        for s in trained[1:]:
            for model, label in (("mae", "MAE"), ("imae", "i-MAE"), ("mae-continued", "MAE continued"),
                                 (f"untrained-{s}", "untrained")):
                if label in out:
                    r = self._load(f"seed{s}", model, what)
                    if r is None:
                        del out[label]
                    else:
                        out[label].append(r)
        return {k: v for k, v in out.items() if len(v) == len(trained)}

    def independent(self, what: str = "separability") -> dict[str, list[dict]]:
        """{label: [result per training seed >= 1]}: the seed stages' models scored against the seed-0 teacher,
        a reference none of them was trained against (LS's headline; empty until a seed stage ran). Models
        present at every such seed only, so seeds pair one to one."""
        trained = [s for s in self.seeds() if s > 0]
        out: dict[str, list[dict]] = {}
        for s in trained:
            for model, label in (("mae", "MAE"), ("imae", "i-MAE"), ("mae-continued", "MAE continued"),
                                 (f"untrained-{s}", "untrained")):
                r = self._load(f"seed{s}", model, what)
                if r is not None:
                    out.setdefault(label, []).append(r)
        return {k: v for k, v in out.items() if len(v) == len(trained)}

    def compare(self, what: str, metric, *, stage: str = "eval") -> tuple[dict, dict, int]:
        """Estimates and paired differences of ``metric`` on ``what`` as the book reports them.

        Over every training seed the campaign has for the MAE and the i-MAE (:meth:`evaluations` with
        ``seeds=True``), else over seed 0. Models scored at seed 0 only (the equal-compute MAE, or the untrained
        control where a seed stage did not score it) are added to the estimates as ``"<label> (seed 0)"`` and
        their differences (seed-0 pairs: ``i-MAE − MAE continued``) to the differences; with one seed they keep
        their plain labels. Returns ``(estimates, differences, n_seeds)``."""
        from .. import comparison as cmp

        one = self.evaluations(what, stage=stage)
        many = self.evaluations(what, stage=stage, seeds=True) if len(self.seeds()) > 1 else {}
        if not ("MAE" in many and "i-MAE" in many):
            return cmp.estimates(one, metric), cmp.differences(one, metric), 1
        est = cmp.estimates({**many, **{f"{k} (seed 0)": v for k, v in one.items() if k not in many}}, metric)
        diff = cmp.differences(many, metric)
        diff.update({k: v for k, v in cmp.differences(one, metric).items() if k not in diff})
        return est, diff, len(many["MAE"])

    def ablations(self, what: str) -> dict[str, list[dict]]:
        """{"standard": [the i-MAE's result], variant: [its result]} for every ablation stage with ``what``
        (training seed 0; every variant is an i-MAE from the same teacher, scored on the same items)."""
        from .stages import default_stages

        out = {}
        std = self._load("eval", "imae", what)
        if std is not None:
            out["standard"] = [std]
        for st in default_stages(self.preset or "cifar"):
            r = self.variant(st.name, what) if st.name.startswith("ablation-") else None
            if r is not None:
                out[st.why.split(": ", 1)[-1]] = [r]
        return out

    def throughput(self) -> dict | None:
        """The throughput benchmark's JSON (benchmarks/throughput.py), or None before that stage ran."""
        f = self.folder / "results" / "throughput" / "throughput.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def throughput_table(self) -> pd.DataFrame | None:
        t = self.throughput()
        if t is None:
            return None
        df = pd.DataFrame(t["rows"])
        base = df[df["path"] == "faithful"].set_index("method")["img_per_s"]
        df["× faithful"] = [r.img_per_s / base.get(r.method, float("nan")) for r in df.itertuples()]
        df["compile s"] = df["compile_s"]
        return df[["method", "path", "batch", "img_per_s", "× faithful", "step_ms", "peak_mem_mb", "compile s"]]

    def steady_img_per_s(self, stage: str) -> float | None:
        """Training rate after warm-up (the median logged rate over the second half of the run: compile and
        the first epoch excluded), from the stage's metrics.jsonl."""
        from ..plotdata import metrics_frame

        try:
            df = metrics_frame(self.run_dir(stage))
        except ImaeError:
            return None
        if "img_per_s" not in df or df.empty:
            return None
        return float(df["img_per_s"].iloc[len(df) // 2:].median())


# Which campaign stage each chapter waits for, where it has no paper-scale results yet.
CHAPTER_STAGES = {"pretrain": "mae", "reconstruction": "eval", "separability": "eval", "semantics": "eval",
                  "classification": "eval", "ablations": "ablation-mask-ratio-0.5"}


def chapter_summary(chapter: str, *, preset: str = "cifar", root: str | os.PathLike | None = None,
                    pool: str = "mean") -> tuple[str, pd.DataFrame]:
    """What a CPU-edition chapter shows at its top about the same measurement at paper scale: a sentence
    generated from the intervals and a table (``chapter``: pretrain, separability, semantics, classification;
    others, and any chapter whose results have not come back, get a sentence naming the pending stage and a
    one-row table saying so). Reads the stored campaign only."""
    from .. import comparison as cmp
    from .. import stats

    def pending(why: str, camp: CampaignResults | None = None) -> tuple[str, pd.DataFrame]:
        """The sentence, and a table of the campaign stages this chapter waits for: status and what is missing."""
        if camp is None:
            return why, pd.DataFrame({"status": [why]}, index=pd.Index(["paper scale"], name="scale"))
        from .stages import default_stages

        rows = []
        for st in default_stages(camp.preset or preset):
            if chapter == "ablations" and not st.name.startswith("ablation-"):
                continue
            if chapter != "ablations" and st.name != CHAPTER_STAGES.get(chapter, "eval"):
                continue
            rec = camp.stage(st.name)
            done_items = set(rec.get("items", {}))
            if chapter == "ablations":  # one model per stage: what it evaluates
                missing = [w for _, w in st.evals] if rec.get("status") != "done" else []
            else:
                missing = [f"{m.lstrip('@')}/{w}" for m, w in st.evals
                           if f"{m.lstrip('@')}/{w}" not in done_items and w == chapter]
            status = rec.get("status", "pending") + (f" ({len(done_items)} of {len(st.evals)} evaluations)"
                                                     if st.itemized and done_items else "")
            rows.append({"campaign stage": st.name, "status": status,
                         "still missing": ", ".join(missing) if missing else st.why})
        return why, pd.DataFrame(rows).set_index("campaign stage")

    try:
        camp = load_campaign(preset, root)
    except ImaeError:
        return pending("No GPU campaign results are stored yet")
    ep = {**camp.epochs("mae"), **camp.epochs("imae")}

    def scale_text(seeds: int) -> str:
        return (f"ViT-Tiny/2 on all of CIFAR-10, MAE {ep.get('mae', '?')} + i-MAE {ep.get('imae', '?')} epochs, "
                f"{'one training seed' if seeds == 1 else f'{seeds} training seeds'}, {', '.join(camp.devices())}")

    def equal_compute(d: dict, k=(), **kw) -> str:
        """The equal-compute control's sentence (seed-0 pairs), or "" before stage mae-continued came back."""
        if "i-MAE − MAE continued" not in d:
            return ""
        return (f"; against the MAE trained as long as the i-MAE (the equal-compute control, seed 0), "
                f"{stats.compare_text('i-MAE', 'it', d['i-MAE − MAE continued'], index=k, **kw)}")

    scale = scale_text(1)
    wait = ("the campaign's ablation stages have not run yet" if chapter == "ablations" else
            f"the campaign's `{CHAPTER_STAGES.get(chapter, 'eval')}` stage has not produced them yet")
    if chapter == "pretrain" and camp.done("mae"):
        from ..plotdata import loss_summary

        rows = {}
        for stage, label in (("mae", "MAE"), ("imae", "i-MAE")):
            if camp.done(stage):
                df = loss_summary(camp.run_dir(stage))
                rows[label] = {"epochs": ep.get(stage), "loss, first epoch": df.loc["loss", "first epoch"],
                               "loss, last epoch": df.loc["loss", "last epoch"],
                               "img/s after compile": camp.steady_img_per_s(stage)}
        table = pd.DataFrame(rows).T.rename_axis("model")
        fell = all(r["loss, last epoch"] < r["loss, first epoch"] for r in rows.values())
        text = (f"At paper scale ({scale}) the total loss of {' and '.join(rows)} "
                f"{'fell' if fell else 'did not fall everywhere'} from the first epoch to the last")
        return text, table
    if chapter == "classification":
        if not all("MAE" in camp.evaluations(w) for w in ("knn", "linear-probe")):
            return pending(f"No paper-scale results yet: {wait}", camp)
        rows, diffs, seeds = {}, {}, 1
        for what, name in (("knn", "kNN"), ("linear-probe", "linear probe")):
            est, diffs[what], seeds = camp.compare(what, cmp.accuracy(pool))
            for label, e in est.items():
                m, lo, hi = cmp.at(e)
                rows.setdefault(label, {})[f"{name} top-1 %"] = stats.fmt_ci(100 * m, 100 * lo, 100 * hi, ".1f")
        kw = dict(scale=100, unit=" points", fmt=".1f")
        text = (f"At paper scale ({scale_text(seeds)}), on the linear probe "
                f"{stats.compare_text('the trained MAE', 'the untrained encoder', diffs['linear-probe']['MAE − untrained'], **kw)}, "
                f"and {stats.compare_text('i-MAE', 'the MAE', diffs['linear-probe']['i-MAE − MAE'], **kw)}"
                f"{equal_compute(diffs['linear-probe'], **kw)}; on kNN "
                f"{stats.compare_text('i-MAE', 'the MAE', diffs['knn']['i-MAE − MAE'], **kw)}")
        ft = camp.evaluations("finetune", stage="finetune")
        if ft:
            for label, e in cmp.estimates(ft, cmp.accuracy(pool)).items():
                m, lo, hi = cmp.at(e)
                rows.setdefault(label, {})["fine-tuned top-1 % (seed 0)"] = stats.fmt_ci(100 * m, 100 * lo, 100 * hi,
                                                                                         ".1f")
            dft = cmp.differences(ft, cmp.accuracy(pool))
            if "i-MAE − MAE" in dft:
                text += f"; fine-tuned, {stats.compare_text('i-MAE', 'the MAE', dft['i-MAE − MAE'], **kw)}"
        table = pd.DataFrame(rows).T.rename_axis("model")
        return text, table.fillna("—")
    if chapter in ("separability", "semantics"):
        what = chapter
        one = camp.evaluations(what)
        if "MAE" not in one or "i-MAE" not in one:
            return pending(f"No paper-scale results yet: {wait}", camp)
        alphas = one["MAE"][0]["alphas"]
        k = stats.headline_index(alphas)
        metric = cmp.ls_ratio("sub", pool) if what == "separability" else cmp.ds("sub", pool)
        est, d, seeds = camp.compare(what, metric)
        table = cmp.wide(cmp.frame(est, index=alphas))
        name = ("the subordinate's R² over each model's clean ceiling" if what == "separability"
                else "the subordinate's class accuracy")
        text = (f"At paper scale ({scale_text(seeds)}), on {name} at α = {alphas[k]}, "
                f"{stats.compare_text('i-MAE', 'the MAE', d['i-MAE − MAE'], index=k)}")
        if "MAE − untrained" in d:
            text += f", and {stats.compare_text('the MAE', 'the untrained encoder', d['MAE − untrained'], index=k)}"
        else:
            text += " (the untrained control is not evaluated yet)"
        text += equal_compute(d, k=k)
        if what == "semantics":  # the pretraining-side study: same-class sampling (same_prob) at seed 0
            sp = {}
            for st, label in (("imae-sp0", "i-MAE, same_prob 0"), ("imae-sp0.5", "i-MAE, same_prob 0.5")):
                r = camp.variant(st, what)
                if r is not None:
                    sp[label] = [r]
            if sp:
                pairs = {f"i-MAE − {label}": ("i-MAE", label) for label in sp}
                diffs = cmp.differences({"i-MAE": one["i-MAE"], **sp}, metric, pairs=pairs)
                text += "; " + ", and ".join(
                    stats.compare_text("the standard i-MAE (same_prob 1)", f"the one with {label.split(', ')[1]}",
                                       dv, index=k) for label, dv in zip(sp, diffs.values()))
                table = pd.concat([table, cmp.wide(cmp.frame(cmp.estimates(sp, metric), index=alphas))], axis=1)
        return text, table
    if chapter == "reconstruction":
        res = camp.evaluations("reconstruction")
        if "i-MAE" not in res:
            return pending(f"No paper-scale results yet: {wait}", camp)
        alphas = res["i-MAE"][0]["alphas"]
        k = stats.headline_index(alphas)
        rows = {}
        imae = res["i-MAE"]
        for part, name in (("sub", "subordinate"), ("dom", "dominant")):
            for label, key in (("i-MAE", "imae"), ("mixture itself", "input")):
                m, lo, hi = cmp.at(stats.estimate([cmp.at_alpha(cmp.psnr(key, part), k)(r) for r in imae]))
                rows.setdefault(label, {})[f"PSNR {name}, removed patches, dB (α = {alphas[k]})"] = \
                    stats.fmt_ci(m, lo, hi, ".2f")
        d = {p: stats.difference([cmp.at_alpha(cmp.psnr("imae", p), k)(r) for r in imae],
                                 [cmp.at_alpha(cmp.psnr("input", p), k)(r) for r in imae]) for p in ("sub", "dom")}
        text = (f"At paper scale ({scale}), on the removed patches at α = {alphas[k]}, "
                f"{stats.compare_text('the i-MAE subordinate branch', 'the mixture itself', d['sub'], unit=' dB', fmt='.2f')}, "
                f"and {stats.compare_text('its dominant branch', 'the mixture itself (an upper reference)', d['dom'], unit=' dB', fmt='.2f')}")
        return text, pd.DataFrame(rows).T.rename_axis("model")
    if chapter == "ablations":
        res = {w: camp.ablations(w) for w in ("separability", "reconstruction", "linear-probe")}
        variants = [v for v in res["separability"] if v != "standard"]
        if not variants:
            return pending(f"No paper-scale results yet: {wait}", camp)
        alphas = res["separability"]["standard"][0]["alphas"]
        k = stats.headline_index(alphas)
        measures = {f"LS sub R² (α = {alphas[k]})": ("separability", cmp.at_alpha(cmp.ls("sub", pool), k), 1.0, ".3f"),
                    f"PSNR sub dB (α = {alphas[k]})": ("reconstruction", cmp.at_alpha(cmp.psnr_own("sub"), k), 1.0, ".2f"),
                    "linear probe %": ("linear-probe", cmp.accuracy(pool), 100.0, ".1f")}
        rows, moves = {}, {}
        for col, (what, metric, sc, fmt) in measures.items():
            r = res[what]
            for label, e in cmp.estimates(r, metric).items():
                m, lo, hi = cmp.at(e)
                rows.setdefault(label, {})[col] = stats.fmt_ci(sc * m, sc * lo, sc * hi, fmt)
            pairs = {v: (v, "standard") for v in r if v != "standard"}
            for v, dv in cmp.differences(r, metric, pairs=pairs).items():
                moves[(v, col.split(" (")[0])] = (float(dv.lo), float(dv.hi))
        moved = stats.moves_text(moves)
        text = (f"At paper scale ({scale}; {len(variants)} of the {len(_ablation_stages(camp))} ablations back), "
                + (f"against the standard i-MAE beyond the noise of one training seed: {moved}" if moved else
                   "no variant differs from the standard i-MAE beyond the noise of one training seed"))
        table = pd.DataFrame(rows).T.rename_axis("variant").reindex(["standard", *variants])
        return text, table.fillna("—")
    return pending(f"No paper-scale results yet: {wait}", camp)


def _ablation_stages(camp: CampaignResults) -> list[str]:
    from .stages import default_stages

    return [st.name for st in default_stages(camp.preset or "cifar") if st.name.startswith("ablation-")]


def load_campaign(preset: str = "cifar", root: str | os.PathLike | None = None) -> CampaignResults:
    """Open ``<root>/campaign/<preset>`` (root: the repository; a path to a campaign folder also works)."""
    base = Path(root) if root is not None else repo_root()
    folder = base if (base / "manifest.json").is_file() else base / "campaign" / preset
    return CampaignResults(folder)


__all__ = ["CHAPTER_STAGES", "CampaignResults", "LABELS", "chapter_summary", "load_campaign"]
