"""The Findings page: each claim of the paper judged by ONE rule (:mod:`imae.companion.verdict`) at each scale.

Every chapter notebook writes, in its record (``<results>/<chapter>.json``), a ``claims`` section: for each
claim it measures, the :class:`imae.companion.verdict.Evidence` the rule needs (the paired difference, the gate on the
same metric, the equal-compute difference, the number of training seeds, secondary columns). The paper-scale
chapter writes the same section from the GPU campaign's stored results. This module only collects that
evidence and judges it, so the CPU edition and paper scale are judged alike, by code under test.

* :func:`answer_table`: one row per claim, the CPU edition's and paper scale's verdict and key number (the
  table at the top of the intro and of the Findings page);
* :func:`findings`: the detailed rows (measurement, number, gates, equal-compute control, secondary
  columns, the verdict and why) for one scale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import PRESETS
from .verdict import Evidence, judge

SCALES = tuple(PRESETS)  # smallest to largest
PAPER_SCALE = "paper_scale"  # the chapter whose record holds the GPU campaign's evidence


@dataclass(frozen=True)
class Claim:
    key: str
    claim: str  # the paper's claim, in short
    short: str  # a few words for the answer table
    chapter: str  # the CPU-edition chapter that measures it


CLAIMS = (
    Claim("ls", "i-MAE's latent of a mixture is more linearly separable into its two images' latents than "
                "MAE's", "Linear separability (LS), α = 0.3", "separability"),
    Claim("ls_alpha", "... at every mixing weight α", "LS across α", "separability"),
    Claim("ds_alpha", "i-MAE's latent of a mixture carries more of each image's class (degree of semantics) "
                      "than MAE's", "Degree of semantics (DS) across α", "semantics"),
    Claim("sampling", "Same-class (semantics-enhanced) pair sampling raises the degree of semantics",
          "Same-class sampling raises DS", "semantics"),
    Claim("probe", "i-MAE learns better representations than MAE for linear probing", "Linear probe",
          "classification"),
    Claim("finetune", "... and for fine-tuning", "Fine-tuning", "classification"),
)
CLAIM_KEYS = tuple(c.key for c in CLAIMS)


def load_records(results_dir: str | Path) -> dict[str, dict[str, dict]]:
    """{chapter: {preset: record}} from ``results_dir`` and its per-preset subfolders."""
    root = Path(results_dir)
    out: dict[str, dict[str, dict]] = {}
    for f in [*root.glob("*.json"), *root.glob("*/*.json")]:
        try:
            rec = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(rec, dict) or "notebook" not in rec or "preset" not in rec:
            continue
        out.setdefault(rec["notebook"], {})[rec["preset"]] = rec
    return out


def largest(records: dict[str, dict], need: str | None = None) -> tuple[str, dict] | None:
    """The record of the largest scale (that has key ``need``)."""
    ok = [(p, r) for p, r in records.items() if need is None or need in r]
    if not ok:
        return None
    return max(ok, key=lambda pr: SCALES.index(pr[0]) if pr[0] in SCALES else -1)


def cpu_evidence(results_dir: str | Path) -> tuple[dict[str, Evidence], str | None]:
    """The CPU edition's evidence per claim (the largest scale whose chapter records hold it), and that
    scale's preset (None: no chapter record yet)."""
    records = load_records(results_dir)
    out, presets = {}, []
    for c in CLAIMS:
        got = largest(records.get(c.chapter, {}), "claims")
        if got and c.key in got[1]["claims"]:
            out[c.key] = Evidence.from_dict(got[1]["claims"][c.key])
            presets.append(got[0])
    return out, (max(presets, key=lambda p: SCALES.index(p) if p in SCALES else -1) if presets else None)


def paper_scale_evidence(results_dir: str | Path) -> dict[str, Evidence] | None:
    """The GPU campaign's evidence per claim (the paper-scale chapter's record), None where it never ran."""
    got = largest(load_records(results_dir).get(PAPER_SCALE, {}), "claims")
    return None if got is None else {k: Evidence.from_dict(v) for k, v in got[1]["claims"].items()}


def _number(ev: Evidence | None) -> str:
    if ev is None or ev.main is None:
        return "—"
    return ev.main.text(ev.metric)


def answer_table(results_dir: str | Path) -> pd.DataFrame:
    """One row per claim: the claim in short, the CPU edition's verdict and paper scale's, each with the key
    number (claimed − MAE, 95 % interval). Narrow on purpose: it is the first thing a reader sees."""
    cpu, _ = cpu_evidence(results_dir)
    gpu = paper_scale_evidence(results_dir) or {}
    rows = []
    for c in CLAIMS:
        row = {"claim": c.short}
        for col, ev in (("CPU edition", cpu.get(c.key)), ("paper scale", gpu.get(c.key))):
            if ev is None:
                row[col] = "not measured"
                continue
            v = judge(ev)
            num = _number(ev)
            row[col] = f"**{v.label}**" + ("" if num == "—" else f" ({num})")
        rows.append(row)
    return pd.DataFrame(rows)


def findings(results_dir: str | Path, scale: str = "cpu") -> pd.DataFrame:
    """The detailed verdicts at one scale (``cpu``: the CPU edition; ``paper``: the GPU campaign): one row per
    claim with the measurement, claimed − MAE, the gates, the equal-compute difference, secondary columns,
    the verdict and its reason."""
    if scale not in ("cpu", "paper"):
        raise ValueError(f"scale={scale!r}; choose cpu or paper")
    evs = cpu_evidence(results_dir)[0] if scale == "cpu" else (paper_scale_evidence(results_dir) or {})
    rows = []
    for c in CLAIMS:
        ev = evs.get(c.key)
        if ev is None:
            rows.append({"claim": c.claim, "measurement": "—", "i-MAE − MAE": "—", "gate": "—",
                         "equal compute": "—", "more": "—", "verdict": "not measured", "why": "no record yet"})
            continue
        v = judge(ev)
        m = ev.metric
        gate = "; ".join(f"{k} {'not measured' if g is None else g.text(m)}" for k, g in ev.gates.items()) or "—"
        equal = ("not applicable (same compute by design)" if not ev.equal_compute_applies else
                 "not run yet" if ev.equal_compute is None else f"i-MAE − MAE continued {ev.equal_compute.text(m)}")
        more = "; ".join([*(f"{k} {d.text(m)}" for k, d in ev.details.items()), *ev.notes]) or "—"
        rows.append({"claim": c.claim, "measurement": ev.what or "—", "i-MAE − MAE": _number(ev), "gate": gate,
                     "equal compute": equal, "more": more, "verdict": v.label, "why": v.reason})
    return pd.DataFrame(rows)


def scale_line(results_dir: str | Path, scale: str = "cpu") -> str:
    """One line of provenance for a table: preset, data, epochs, training seeds, hardware (without the scale's
    name: the caller labels it)."""
    records = load_records(results_dir)
    if scale == "paper":
        got = largest(records.get(PAPER_SCALE, {}))
        if got is None:
            return "no GPU campaign results stored yet"
        rec = got[1]
        runs = rec.get("runs", {})
        seeds = rec.get("n_seeds", 1)
        return (f"`{rec.get('preset')}` preset, ViT-Tiny/2 on all 50,000 CIFAR-10 training images, MAE "
                f"{runs.get('mae', {}).get('epochs', '?')} + i-MAE {runs.get('imae', {}).get('epochs', '?')} epochs, "
                f"{seeds} training seed{'s' if seeds != 1 else ''}, {rec.get('hardware', '?')}")
    got = largest(records.get("separability", {}), "claims") or largest(records.get("classification", {}))
    if got is None:
        return "no CPU-edition results stored yet"
    rec = got[1]
    runs = rec.get("runs", {})
    mae = next((r for r in runs.values() if r.get("method") == "mae"), {})
    imae = next((r for r in runs.values() if r.get("method") == "imae"), {})
    seeds = rec.get("seeds") or [0]
    images = mae.get("train_images", "?")
    images = "all" if images == "all" else f"{images}"
    return (f"`{rec.get('preset')}` preset, {mae.get('dataset', '?')} ({images} training images), "
            f"MAE {mae.get('epochs', '?')} + i-MAE {imae.get('epochs', '?')} epochs, {len(seeds)} training "
            f"seed{'s' if len(seeds) != 1 else ''}, {mae.get('hardware', '?')}")


def paper_scale_claims(camp, pool: str = "mean") -> dict[str, Evidence]:
    """Each claim's evidence from the GPU campaign's stored results (``camp``: a
    :class:`imae.campaign.results.CampaignResults`), built as the CPU chapters build theirs; a claim whose
    campaign stage has not run yet is ``pending`` with that stage named, beside what is already measured."""
    from . import comparison as cmp
    from . import stats

    def pend(kind, stage, why, **kw):
        return cmp.pending_evidence(kind, f"campaign stage {stage} ({why})", **kw)

    acc = cmp.accuracy(pool)
    claims: dict[str, Evidence] = {}
    probe = camp.evaluations("linear-probe", seeds=True)
    claims["probe"] = (cmp.evidence(probe, acc, "accuracy", what="clean-image linear-probe accuracy")
                       if {"MAE", "i-MAE"} <= set(probe) else pend("accuracy", "eval", "the linear probes"))
    # separability: the headline against an independent reference (seed-k models against the seed-0 teacher)
    sep = camp.evaluations("separability")
    alphas = sep["MAE"][0]["alphas"] if "MAE" in sep else [stats.HEADLINE_ALPHA]
    k = stats.headline_index(alphas)
    avg = stats.alpha_mean(stats.below_half(alphas))
    head = cmp.at_alpha(cmp.ls("sub", pool), k)
    self_ref, self_avg = {}, {}
    if {"MAE", "i-MAE"} <= set(sep):
        self_ref = {"self-reference R² (the i-MAE's own teacher, seed 0)": cmp.differences(sep, head)["i-MAE − MAE"],
                    "self-reference over the clean ceiling (seed 0)":
                        cmp.differences(sep, cmp.at_alpha(cmp.ls_ratio("sub", pool), k))["i-MAE − MAE"]}
        self_avg = {"self-reference R² averaged over α < 0.5 (seed 0)":
                    cmp.differences(sep, cmp.ls("sub", pool), reduce=avg)["i-MAE − MAE"]}
    ind = camp.independent("separability")
    if {"MAE", "i-MAE", "untrained"} <= set(ind):
        seeds = f"seeds 1–{len(ind['MAE'])}" if len(ind["MAE"]) > 1 else "seed 1"
        claims["ls"] = cmp.evidence(ind, head, "r2", details=self_ref,
                                    what=f"the subordinate's R² against an independent reference (the seed-0 "
                                         f"teacher, {seeds}), α = {alphas[k]}")
        claims["ls_alpha"] = cmp.evidence(ind, cmp.ls("sub", pool), "r2", reduce=avg, details=self_avg,
                                          what="the subordinate's R² against an independent reference, averaged "
                                               "over α < 0.5")
    else:
        why = "an independent reference: seed-1 models scored against the seed-0 teacher"
        claims["ls"] = pend("r2", "seed1", why, details=self_ref,
                            what=f"the subordinate's R² against an independent reference, α = {alphas[k]}")
        claims["ls_alpha"] = pend("r2", "seed1", why, details=self_avg)
    # degree of semantics: every training seed that has every model
    sem = camp.evaluations("semantics", seeds=True)
    if {"MAE", "i-MAE", "untrained"} <= set(sem):
        s_alphas = sem["MAE"][0]["alphas"]
        claims["ds_alpha"] = cmp.evidence(sem, cmp.ds("sub", pool), "accuracy",
                                          reduce=stats.alpha_mean(stats.below_half(s_alphas)),
                                          what="the subordinate's class accuracy averaged over α < 0.5")
    else:
        claims["ds_alpha"] = pend("accuracy", "eval", "the untrained encoder's degree of semantics, its gate")
    sem0 = camp.evaluations("semantics")
    sp0 = camp.variant("imae-sp0", "semantics")
    if sp0 is not None and {"MAE", "i-MAE", "untrained"} <= set(sem0):
        s_alphas = sem0["MAE"][0]["alphas"]
        ks = stats.headline_index(s_alphas)
        ds_head = cmp.at_alpha(cmp.ds("sub", pool), ks)
        claims["sampling"] = cmp.evidence(
            {"same_prob = 1.0": sem0["i-MAE"], "same_prob = 0.0": [sp0]}, ds_head, "accuracy",
            claimed="same_prob = 1.0", base="same_prob = 0.0", equal=None, control=None,
            gates={"MAE − untrained": cmp.differences(sem0, ds_head)["MAE − untrained"]},
            what=f"DS of the subordinate (α = {s_alphas[ks]}), same_prob 1 − 0")
    else:
        claims["sampling"] = pend("accuracy", "imae-sp0" if sp0 is None else "eval",
                                  "i-MAE with random pairs" if sp0 is None else
                                  "the untrained encoder's degree of semantics")
    ft = camp.evaluations("finetune", stage="finetune")
    probe0 = camp.evaluations("linear-probe")
    if {"MAE", "i-MAE", "untrained"} <= set(ft) and "MAE" in probe0:
        claims["finetune"] = cmp.evidence(
            ft, acc, "accuracy", control=None, what="clean-image accuracy after fine-tuning",
            gates={"fine-tuned MAE − same recipe from scratch":
                       stats.difference([acc(r) for r in ft["MAE"]], [acc(r) for r in ft["untrained"]]),
                   "fine-tuned MAE − its linear probe":
                       stats.difference([acc(r) for r in ft["MAE"]], [acc(r) for r in probe0["MAE"]])})
    else:
        claims["finetune"] = pend("accuracy", "finetune", "fine-tuning and its from-scratch control")
    return claims
