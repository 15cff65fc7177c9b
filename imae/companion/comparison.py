"""Model comparisons as every chapter shows them: the models over training seeds, their controls, means
with 95 % intervals and paired differences (:mod:`imae.companion.stats`).

The ARMS of a comparison are labelled lists of run directories, one per training seed, aligned by seed:

* ``MAE``: the MAE teacher / baseline; ``i-MAE``: trained from it; ``MAE continued``: the equal-compute
  control (the teacher trained further as an MAE for the i-MAE's epochs);
* ``untrained``: the same architecture at its initialisation (same init seed);
* ``pixels``: the raw pixels of the input (:class:`imae.controls.PixelEncoder`).

Every arm of seed ``s`` is scored against ONE reference, the MAE teacher of seed ``s`` (linear
separability's targets, reconstruction's MAE baseline), on the same evaluation pairs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import stats
from .stats import Estimate, Items
from .verdict import Evidence, Interval

MAIN = ("MAE", "i-MAE", "MAE continued")
CONTROLS = ("untrained", "pixels")
# Differences every chapter reports (a - b), and what each isolates.
DIFFERENCES = {
    "i-MAE − MAE": ("i-MAE", "MAE"),
    "i-MAE − MAE continued": ("i-MAE", "MAE continued"),
    "MAE − untrained": ("MAE", "untrained"),
}


def main_arms(preset: str, seeds: Sequence[int] = (0,), *, dataset=None, data_root=None, mae_epochs=None,
              imae_epochs=None, same_prob: float = 1.0, overrides: dict | None = None, runs_dir=None,
              device: str = "auto", equal_compute: bool = True, controls: bool = True) -> dict[str, list[Path]]:
    """Train (or reuse) the main comparison for every seed and return its arms (see the module docstring)."""
    from ..controls import pixel_run, untrained_run
    from .experiments import comparison_runs

    runs = comparison_runs(preset, seeds, dataset=dataset, data_root=data_root, mae_epochs=mae_epochs,
                           imae_epochs=imae_epochs, same_prob=same_prob, overrides=overrides, runs_dir=runs_dir,
                           device=device, equal_compute=equal_compute)
    arms = {"MAE": [runs[s]["mae"] for s in seeds], "i-MAE": [runs[s]["imae"] for s in seeds]}
    if equal_compute:
        arms["MAE continued"] = [runs[s]["mae_continued"] for s in seeds]
    if controls:
        extra = {k: v for k, v in {"dataset": dataset, "data.root": data_root}.items() if v is not None}
        model_ov = {k: v for k, v in (overrides or {}).items() if k.startswith("model.")}
        arms["untrained"] = [untrained_run(preset, seed=s, runs_dir=runs_dir, **extra, **model_ov) for s in seeds]
        arms["pixels"] = [pixel_run(preset, runs_dir=runs_dir, **extra, **model_ov)] * len(seeds)
    return arms


def evaluate_arms(arms: Mapping[str, Sequence[str | os.PathLike]], what: str, *,
                  references: Sequence[str | os.PathLike] | None = None, skip: Sequence[str] = (),
                  **options) -> dict[str, list[dict]]:
    """``what`` for every arm and seed, cached (:func:`imae.companion.experiments.cached_evaluation`):
    {label: [result per seed]}.

    Args:
        arms: {label: [run dir per seed]}.
        what: the evaluation.
        references: one reference run per seed (the seed's MAE teacher) for separability and
            reconstruction; default ``arms["MAE"]``.
        skip: labels not to evaluate (e.g. ``pixels`` for reconstruction).
        **options: evaluation options (the same for every arm, so all see the same pairs).
    """
    from .experiments import cached_evaluation
    from ..runs import read_run_config

    needs_ref = what in ("separability", "reconstruction")
    refs = list(references if references is not None else arms["MAE"]) if needs_ref else []
    ref_fps = [read_run_config(r)["fingerprint"] for r in refs]
    out = {}
    for label, runs in arms.items():
        if label in skip:
            continue
        results = []
        for k, run in enumerate(runs):
            kw = dict(options)
            if needs_ref:  # ONE reference per seed, pinned by fingerprint
                kw["reference"] = str(refs[k])
                kw["reference_fingerprint"] = ref_fps[k]
            results.append(cached_evaluation(run, what, **kw))
        out[label] = results
    return out


def flat(arms: Mapping[str, Sequence[str | os.PathLike]]) -> dict[str, str | os.PathLike]:
    """{"<label> (seed k)": run dir} for provenance records."""
    return {f"{label} (seed {k})": run for label, runs in arms.items() for k, run in enumerate(runs)}


# ------------------------------------------------------------------------------------- per-item metrics
class StaleResult(RuntimeError):
    """An evaluation result without per-item arrays (computed by an older version)."""


def _items(result: dict) -> dict:
    items = result.get("items")
    if items is None:
        raise StaleResult(f"the {result.get('what')} result carries no per-item arrays (items); it was computed by "
                          "an older version: rerun the evaluation (delete its folder under <run>/eval/)")
    return items


def _same_items(results: Sequence[dict]) -> None:
    """Refuse to pair results scored on different test items (pairs or images)."""
    for name in ("pairs_a", "pairs_b", "test_index"):
        arrays = [_items(r).get(name) for r in results]
        if any(a is not None for a in arrays) and not all(
                a is not None and np.array_equal(a, arrays[0]) for a in arrays):
            raise ValueError(f"the results were scored on different test items ({name} differ); evaluate every "
                             "model with the same evaluation seed, n_pairs, max_images and data")


def ls(part: str, pool: str = "mean") -> Callable[[dict], Items]:
    """Linear separability: held-out ridge R² of the ``part`` (sub|dom) component, per alpha."""
    return lambda r: Items("r2", _items(r)[f"{pool}/{part}/sse"], _items(r)[f"{pool}/{part}/sst"])


def ls_const(part: str, pool: str = "mean") -> Callable[[dict], Items]:
    """The constant (fit-set mean) predictor's R² for the same targets."""
    return lambda r: Items("r2", _items(r)[f"{pool}/{part}/sse_const"], _items(r)[f"{pool}/{part}/sst"])


def ls_ratio(part: str, pool: str = "mean") -> Callable[[dict], Items]:
    """LS divided by the model's clean ceiling (both on the same test pairs, resampled together)."""
    return lambda r: Items("r2_ratio", _items(r)[f"{pool}/{part}/sse"], _items(r)[f"{pool}/{part}/sst"],
                           (_items(r)[f"{pool}/clean/sse"], _items(r)[f"{pool}/clean/sst"]))


def ls_clean(pool: str = "mean") -> Callable[[dict], Items]:
    """The clean ceiling: ridge from the clean image's own feature to the reference's feature of it."""
    return lambda r: Items("r2", _items(r)[f"{pool}/clean/sse"], _items(r)[f"{pool}/clean/sst"])


def no_refit(part: str) -> Callable[[dict], Items]:
    """Refit-free, centred R² of the model's own heads against the reference's embeddings, per alpha."""
    return lambda r: Items("r2", _items(r)[f"no_refit/{part}/sse"], _items(r)[f"no_refit/{part}/sst"])


def ds(part: str, pool: str = "mean") -> Callable[[dict], Items]:
    """Degree of semantics: accuracy for the ``part`` component's class, per alpha."""
    return lambda r: Items("accuracy", _items(r)[f"{pool}/{part}/correct"])


def ds_set(pool: str = "mean") -> Callable[[dict], Items]:
    """Set-valued degree of semantics: both classes of the pair named, per alpha."""
    return lambda r: Items("accuracy", _items(r)[f"{pool}/set_correct"])


def accuracy(pool: str = "mean") -> Callable[[dict], Items]:
    """Clean-image accuracy (linear probe, kNN) per test image."""
    return lambda r: Items("accuracy", _items(r)[f"{pool}/correct"])


def psnr(model: str, part: str, measure: str = "psnr_masked") -> Callable[[dict], Items]:
    """Reconstruction PSNR of ``model`` (imae | mae | input) for ``part``, per alpha."""
    return lambda r: Items("mean", _items(r)[f"{model}/{part}/{measure}"])


def psnr_own(part: str, measure: str = "psnr_masked") -> Callable[[dict], Items]:
    """A model's own reconstruction PSNR: an i-MAE's branch for ``part``, an MAE's single reconstruction."""
    def metric(r: dict) -> Items:
        own = "imae" if f"imae/{part}/{measure}" in _items(r) else "mae"
        return psnr(own, part, measure)(r)
    return metric


def at_alpha(metric: Callable[[dict], Items], k: int) -> Callable[[dict], Items]:
    """The same metric at alpha number ``k`` only (a scalar estimate)."""
    def picked(r: dict) -> Items:
        it = metric(r)
        sst = None if it.sst is None else (it.sst if np.ndim(it.sst) == 1 else it.sst[k])
        return Items(it.kind, np.asarray(it.values)[k], sst, it.ceiling)
    return picked


# ------------------------------------------------------------------------------------------ summaries
def estimates(results: Mapping[str, Sequence[dict]], metric: Callable[[dict], Items], *,
              labels: Sequence[str] | None = None, **kw) -> dict[str, Estimate]:
    """{label: mean over seeds with its interval} for every arm that has the metric."""
    out = {}
    for label in labels or results:
        if label not in results:
            continue
        try:
            per_seed = [metric(r) for r in results[label]]
        except KeyError:
            continue  # a metric this arm does not have, e.g. refit-free scores of the pixel control
        out[label] = stats.estimate(per_seed, **kw)
    return out


def differences(results: Mapping[str, Sequence[dict]], metric: Callable[[dict], Items], *,
                pairs: Mapping[str, tuple[str, str]] = DIFFERENCES, **kw) -> dict[str, Estimate]:
    """{name: paired difference a − b} for every pair whose both arms are present."""
    out = {}
    for name, (a, b) in pairs.items():
        if a in results and b in results:
            if len(results[a]) != len(results[b]):
                raise ValueError(f"{name}: {len(results[a])} vs {len(results[b])} seeds; pair seeds one to one")
            _same_items([*results[a], *results[b]])
            out[name] = stats.difference([metric(r) for r in results[a]], [metric(r) for r in results[b]], **kw)
    return out


def frame(ests: Mapping[str, Estimate], *, index=None, index_name: str = "alpha", scale: float = 1.0) -> pd.DataFrame:
    """Tidy table: one row per (model, index) with mean, lo, hi and the number of seeds (a scalar estimate,
    such as the constant predictor's, is repeated along the index)."""
    if index is None:
        return pd.DataFrame(stats.summary_rows(ests, scale=scale))
    n = len(list(index))
    ests = {k: Estimate(*(np.broadcast_to(np.asarray(getattr(e, f)), (n,)) for f in ("mean", "lo", "hi")),
                        e.n_seeds, e.n_items) if np.ndim(e.mean) == 0 else e for k, e in ests.items()}
    return pd.DataFrame(stats.summary_rows(ests, index_name=index_name, index=list(index), scale=scale))


def wide(df: pd.DataFrame, *, index: str = "alpha", fmt: str = ".3f") -> pd.DataFrame:
    """``mean [lo, hi]`` strings, models as columns (for the book's tables)."""
    cells = df.assign(cell=[stats.fmt_ci(m, lo, hi, fmt) for m, lo, hi in zip(df["mean"], df["lo"], df["hi"])])
    if index not in df.columns:
        return cells.set_index("model")[["cell"]].rename(columns={"cell": "mean [95 % CI]"})
    return cells.pivot(index=index, columns="model", values="cell")[list(dict.fromkeys(df["model"]))]


def record(ests: Mapping[str, Estimate]) -> dict:
    """JSON-ready {label: {mean, lo, hi, n_seeds, n_items}}."""
    return {k: v.as_dict() for k, v in ests.items()}


def at(est: Estimate, k: int | None = None) -> tuple[float, float, float]:
    """(mean, lo, hi) as floats, at index ``k`` of a per-alpha estimate."""
    pick = (lambda x: float(np.asarray(x).reshape(-1)[k])) if k is not None else (lambda x: float(np.asarray(x)))
    return pick(est.mean), pick(est.lo), pick(est.hi)


# ------------------------------------------------------------------------------------ claims' evidence
def evidence(results: Mapping[str, Sequence[dict]], metric: Callable[[dict], Items], kind: str, *, what: str,
             claimed: str = "i-MAE", base: str = "MAE", equal: str | None = "MAE continued",
             control: str = "untrained", reduce=None, gates: Mapping[str, Estimate | None] | None = None,
             details: Mapping[str, Estimate] | None = None, notes: Sequence[str] = ()) -> Evidence:
    """What the verdict rule (:mod:`imae.companion.verdict`) judges a claim "``claimed`` beats ``base`` on ``metric``"
    on, from per-item results {arm: [result per seed]}: the paired ``claimed − base``, the gate ``base −
    control`` on the SAME metric (None: only the given ``gates``) plus any extra ``gates``, ``claimed − equal`` (the equal-compute control;
    None where that arm is absent or ``equal`` is None, which also marks the claim as one where compute was
    equal by design), all with the same ``reduce`` (e.g. :func:`imae.companion.stats.alpha_mean`). ``kind``: ``r2`` |
    ``accuracy`` | ``psnr``. ``details``: estimates shown beside the verdict, never judged."""
    def diff(a: str, b: str) -> Estimate:
        if len(results[a]) != len(results[b]):
            raise ValueError(f"{a} − {b}: {len(results[a])} vs {len(results[b])} seeds; pair seeds one to one")
        _same_items([*results[a], *results[b]])
        return stats.difference([metric(r) for r in results[a]], [metric(r) for r in results[b]], reduce=reduce)

    main = diff(claimed, base)
    gate = {} if control is None else {
        f"{base} − {control}": Interval.of(diff(base, control)) if control in results else None}
    gate.update({k: None if v is None else Interval.of(v) for k, v in (gates or {}).items()})
    eq = Interval.of(diff(claimed, equal)) if equal is not None and equal in results else None
    return Evidence(metric=kind, what=what, main=Interval.of(main), gates=gate, n_seeds=main.n_seeds,
                    equal_compute=eq, equal_compute_applies=equal is not None,
                    details={k: Interval.of(v) for k, v in (details or {}).items()}, notes=list(notes))


def independent_references(teachers: Sequence[str | os.PathLike]) -> list[str | os.PathLike] | None:
    """For LS's headline: seed k's models are scored against the teacher of seed k + 1 (cyclically), an encoder
    that none of them was trained against or distilled from. None with fewer than two training seeds."""
    teachers = list(teachers)
    if len(teachers) < 2:
        return None
    return teachers[1:] + teachers[:1]


def pending_evidence(kind: str, waits_for: str, what: str = "", details: Mapping[str, Estimate] | None = None,
                     notes: Sequence[str] = ()) -> Evidence:
    """Evidence for a claim whose measurement cannot be made yet (the verdict is ``pending``), with what is
    already measured beside it (``details``, never judged)."""
    return Evidence(metric=kind, what=what, main=None, gates={}, n_seeds=0, pending=waits_for,
                    details={k: Interval.of(v) for k, v in (details or {}).items()}, notes=list(notes))
