"""The paper-scale boxes and the paper-scale chapter's reading of the campaign: book prose from stored results.

Beside :mod:`imae.companion.comparison` and :mod:`imae.companion.findings`: the campaign (:mod:`imae.campaign`)
trains, evaluates and stores; this module reads what it stored (:class:`imae.campaign.results.CampaignResults`)
and says it the way the book does.

* :func:`load_campaign`: the stored campaign of a preset as a :class:`PaperScale`, which adds the book's
  comparisons (:meth:`PaperScale.compare`) and training rates to the stored results;
* :func:`chapter_summary`: what a CPU-edition chapter shows at its top about the same measurement at paper
  scale, a sentence from the intervals and a table.
"""

from __future__ import annotations

import os

import pandas as pd

from . import comparison as cmp
from . import stats
from ..campaign.results import CampaignResults, campaign_folder
from ..campaign.stages import ablation_stage, default_stages, same_prob_stage
from ..design import SAME_PROB_VARIANTS
from ..errors import ImaeError
from .plotdata import loss_summary, metrics_frame


class PaperScale(CampaignResults):
    """A stored campaign as the book reads it: the stored results and the book's comparisons of them."""

    def compare(self, what: str, metric, *, stage: str = "eval") -> tuple[dict, dict, int]:
        """Estimates and paired differences of ``metric`` on ``what`` as the book reports them.

        Over every training seed the campaign has for the MAE and the i-MAE (:meth:`evaluations` with
        ``seeds=True``), else over seed 0. Models scored at seed 0 only (the equal-compute MAE, or the untrained
        control where a seed stage did not score it) are added to the estimates as ``"<label> (seed 0)"`` and
        their differences (seed-0 pairs: ``i-MAE − MAE continued``) to the differences; with one seed they keep
        their plain labels. Returns ``(estimates, differences, n_seeds)``."""
        one = self.evaluations(what, stage=stage)
        many = self.evaluations(what, stage=stage, seeds=True) if len(self.seeds()) > 1 else {}
        if not ("MAE" in many and "i-MAE" in many):
            return cmp.estimates(one, metric), cmp.differences(one, metric), 1
        est = cmp.estimates({**many, **{f"{k} (seed 0)": v for k, v in one.items() if k not in many}}, metric)
        diff = cmp.differences(many, metric)
        diff.update({k: v for k, v in cmp.differences(one, metric).items() if k not in diff})
        return est, diff, len(many["MAE"])

    def steady_img_per_s(self, stage: str) -> float | None:
        """Training rate after warm-up (the median logged rate over the second half of the run: compile and
        the first epoch excluded), from the stage's metrics.jsonl."""
        try:
            df = metrics_frame(self.run_dir(stage))
        except ImaeError:
            return None
        if "img_per_s" not in df or df.empty:
            return None
        return float(df["img_per_s"].iloc[len(df) // 2:].median())


# Which campaign stage each chapter waits for, where it has no paper-scale results yet.
CHAPTER_STAGES = {"pretrain": "mae", "reconstruction": "eval", "separability": "eval", "semantics": "eval",
                  "classification": "eval", "ablations": ablation_stage("mask ratio 0.5")}


def chapter_summary(chapter: str, *, preset: str = "cifar", root: str | os.PathLike | None = None,
                    pool: str = "mean") -> tuple[str, pd.DataFrame]:
    """What a CPU-edition chapter shows at its top about the same measurement at paper scale: a sentence
    generated from the intervals and a table (``chapter``: pretrain, separability, semantics, classification;
    others, and any chapter whose results have not come back, get a sentence naming the pending stage and a
    one-row table saying so). Reads the stored campaign only."""
    def pending(why: str, camp: CampaignResults | None = None) -> tuple[str, pd.DataFrame]:
        """The sentence, and a table of the campaign stages this chapter waits for: status and what is missing."""
        if camp is None:
            return why, pd.DataFrame({"status": [why]}, index=pd.Index(["paper scale"], name="scale"))
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
        name = ("the subordinate's R² against the i-MAE's own teacher over each model's clean ceiling (a "
                "secondary measure: the verdict is judged against an independent reference, another seed's "
                "teacher)" if what == "separability" else "the subordinate's class accuracy")
        text = (f"At paper scale ({scale_text(seeds)}), on {name} at α = {alphas[k]}, "
                f"{stats.compare_text('i-MAE', 'the MAE', d['i-MAE − MAE'], index=k)}")
        if "MAE − untrained" in d:
            text += f", and {stats.compare_text('the MAE', 'the untrained encoder', d['MAE − untrained'], index=k)}"
        else:
            text += " (the untrained control is not evaluated yet)"
        text += equal_compute(d, k=k)
        if what == "semantics":  # the pretraining-side study: same-class sampling (same_prob) at seed 0
            sp = {}
            for st, label in ((same_prob_stage(sp), f"i-MAE, same_prob {sp:g}") for sp in SAME_PROB_VARIANTS):
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
    return [st.name for st in default_stages(camp.preset or "cifar") if st.name.startswith("ablation-")]


def load_campaign(preset: str = "cifar", root: str | os.PathLike | None = None) -> PaperScale:
    """Open ``<root>/campaign/<preset>`` (root: the repository; a path to a campaign folder also works)."""
    return PaperScale(campaign_folder(preset, root))


__all__ = ["CHAPTER_STAGES", "PaperScale", "chapter_summary", "load_campaign"]
