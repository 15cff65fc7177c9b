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

    def evaluations(self, what: str, *, stage: str = "eval") -> dict[str, list[dict]]:
        """{label: [result]} for every model of ``stage`` with a stored ``what`` evaluation, shaped for
        :mod:`imae.comparison` (one training seed: a list of one)."""
        from ..experiments import load_result

        out = {}
        evals = self.folder / "results" / stage / "evals"
        for model, label in LABELS.items():
            f = evals / model / f"{what}.json"
            if f.is_file():
                out[label] = [load_result(f)]
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
    scale = (f"ViT-Tiny/2 on all of CIFAR-10, MAE {ep.get('mae', '?')} + i-MAE {ep.get('imae', '?')} epochs, "
             f"one training seed, {', '.join(camp.devices())}")
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
        res = {w: camp.evaluations(w) for w in ("knn", "linear-probe")}
        if not all(res.values()):
            return pending(f"No paper-scale results yet: {wait}", camp)
        rows, diffs = {}, {}
        for what, name in (("knn", "kNN"), ("linear-probe", "linear probe")):
            for label, e in cmp.estimates(res[what], cmp.accuracy(pool)).items():
                m, lo, hi = cmp.at(e)
                rows.setdefault(label, {})[f"{name} top-1 %"] = stats.fmt_ci(100 * m, 100 * lo, 100 * hi, ".1f")
            diffs[what] = cmp.differences(res[what], cmp.accuracy(pool))
        kw = dict(scale=100, unit=" points", fmt=".1f")
        text = (f"At paper scale ({scale}), on the linear probe "
                f"{stats.compare_text('the trained MAE', 'the untrained encoder', diffs['linear-probe']['MAE − untrained'], **kw)}, "
                f"and {stats.compare_text('i-MAE', 'the MAE', diffs['linear-probe']['i-MAE − MAE'], **kw)}; on kNN "
                f"{stats.compare_text('i-MAE', 'the MAE', diffs['knn']['i-MAE − MAE'], **kw)}")
        return text, pd.DataFrame(rows).T.rename_axis("model")
    if chapter in ("separability", "semantics"):
        what = chapter
        res = camp.evaluations(what)
        if "MAE" not in res or "i-MAE" not in res:
            return pending(f"No paper-scale results yet: {wait}", camp)
        alphas = res["MAE"][0]["alphas"]
        k = alphas.index(0.3) if 0.3 in alphas else len(alphas) // 2
        metric = cmp.ls_ratio("sub", pool) if what == "separability" else cmp.ds("sub", pool)
        table = cmp.wide(cmp.frame(cmp.estimates(res, metric), index=alphas))
        d = cmp.differences(res, metric)
        name = ("the subordinate's R² over each model's clean ceiling" if what == "separability"
                else "the subordinate's class accuracy")
        text = (f"At paper scale ({scale}), on {name} at α = {alphas[k]}, "
                f"{stats.compare_text('i-MAE', 'the MAE', d['i-MAE − MAE'], index=k)}")
        if "MAE − untrained" in d:
            text += f", and {stats.compare_text('the MAE', 'the untrained encoder', d['MAE − untrained'], index=k)}"
        else:
            text += " (the untrained control is not evaluated yet)"
        return text, table
    return pending(f"No paper-scale results yet: {wait}", camp)


def load_campaign(preset: str = "cifar", root: str | os.PathLike | None = None) -> CampaignResults:
    """Open ``<root>/campaign/<preset>`` (root: the repository; a path to a campaign folder also works)."""
    base = Path(root) if root is not None else repo_root()
    folder = base if (base / "manifest.json").is_file() else base / "campaign" / preset
    return CampaignResults(folder)


__all__ = ["CHAPTER_STAGES", "CampaignResults", "LABELS", "chapter_summary", "load_campaign"]
