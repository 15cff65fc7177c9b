"""Uncertainty: means with 95 % intervals over training seeds and evaluation items, paired differences, and
the sentences the book prints about them (computed here, never typed).

Every metric of the book is a function of per-item arrays (one entry per test image or test pair):

* ``accuracy``: the mean of a 0/1 array (probe, kNN, degree of semantics);
* ``r2``: ``1 - sum(sse) / sum(sst)`` (linear separability; ``sst`` the item's squared deviation from the
  mean target, so the ratio of sums is the variance-weighted R²);
* ``mean``: the mean of a real array (PSNR).

A model is measured once per TRAINING SEED (its runs) on the SAME evaluation items (pairs are a pure
function of the evaluation seed, so every model sees the same pairs). The estimate is the mean over seeds of
the metric on all items. Its 95 % interval adds two variances: the test items' sampling noise (a bootstrap
of the items, multinomial weights shared by all seeds) and the training seeds' spread (the variance of the
per-seed values over S seeds, scaled by Student's t with S - 1 degrees of freedom, which a bootstrap of 3
seeds would understate). A DIFFERENCE between two models is formed seed by seed (seed s of one model with
seed s of the other) on the same resampled items, which removes the variance the two share. With one seed
the interval is the items' (pair-resampling) interval alone, and tables say "single seed".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

# The headline alpha is the registry's (its summaries quote it too); the chapters call it as stats.headline_index.
from ..evaluations import HEADLINE_ALPHA, headline_index  # noqa: F401

LEVEL = 0.95
N_BOOT = 1000

KINDS = ("accuracy", "r2", "r2_ratio", "mean")


def below_half(alphas: Sequence[float]) -> list[int]:
    """The alpha indices of a claim across alpha on a component-specific score: every alpha below 0.5 (at 0.5
    the subordinate and the dominant image are interchangeable)."""
    return [k for k, a in enumerate(alphas) if float(a) < 0.5]


@dataclass(frozen=True)
class Items:
    """Per-item arrays of one model and one training seed for one metric.

    Attributes:
        kind: ``accuracy`` | ``r2`` | ``r2_ratio`` | ``mean``.
        values: (..., P) per-item values (0/1 for accuracy, the squared error ``sse`` for r2); leading axes
            (e.g. alphas) are kept.
        sst: (..., P) or (P,) per-item total squares (``r2`` and ``r2_ratio``).
        ceiling: (sse, sst) per item (P,) of a second R² that divides the first (``r2_ratio``: R² over the
            model's clean ceiling, both on the same items, so their ratio is resampled together).
    """

    kind: str
    values: np.ndarray
    sst: np.ndarray | None = None
    ceiling: tuple | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown metric kind {self.kind!r}; choose one of {KINDS}")
        if self.kind in ("r2", "r2_ratio") and self.sst is None:
            raise ValueError("an r2 metric needs per-item sst")
        if self.kind == "r2_ratio" and self.ceiling is None:
            raise ValueError("an r2_ratio metric needs the ceiling's per-item (sse, sst)")

    @property
    def n(self) -> int:
        return int(np.shape(self.values)[-1])

    def weighted(self, w: np.ndarray) -> np.ndarray:
        """The metric under item weights ``w`` (B, P) (each row sums to P): (B, ...) values."""
        v = np.asarray(self.values, dtype=np.float64)
        flat = v.reshape(-1, v.shape[-1])  # (K, P)
        if self.kind in ("accuracy", "mean"):
            out = w @ flat.T / w.sum(axis=1, keepdims=True)
        else:
            s = np.asarray(self.sst, dtype=np.float64)
            s = np.broadcast_to(s, v.shape).reshape(-1, v.shape[-1])
            out = 1.0 - (w @ flat.T) / (w @ s.T)
            if self.kind == "r2_ratio":
                c_sse, c_sst = (np.asarray(x, dtype=np.float64) for x in self.ceiling)
                out = out / (1.0 - (w @ c_sse) / (w @ c_sst))[:, None]
        return out.reshape((w.shape[0], *v.shape[:-1]))

    def point(self) -> np.ndarray:
        return self.weighted(np.ones((1, self.n)))[0]


def _item_weights(n_items: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, P) multinomial item counts: each row is one resample of the P items."""
    return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_boot).astype(np.float64)


def _t_quantile(df: int, level: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Estimate:
    """A mean with its interval (arrays of the metric's shape, e.g. one value per alpha)."""

    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_seeds: int
    n_items: int

    def as_dict(self) -> dict:
        return {"mean": np.asarray(self.mean).tolist(), "lo": np.asarray(self.lo).tolist(),
                "hi": np.asarray(self.hi).tolist(), "n_seeds": self.n_seeds, "n_items": self.n_items}


def _check(per_seed: Sequence[Items]) -> None:
    if not per_seed:
        raise ValueError("no seeds to estimate from")
    n = {it.n for it in per_seed}
    if len(n) != 1:
        raise ValueError(f"seeds were evaluated on different numbers of items {sorted(n)}; evaluate every seed "
                         "on the same pairs (same evaluation seed, n_pairs and max_images)")


def _interval(points: np.ndarray, reps: np.ndarray, level: float, n_items: int) -> Estimate:
    """Combine the two sources of noise (module docstring): ``points`` (S, ...) per-seed values on all items,
    ``reps`` (B, ...) item-bootstrap replicates of their seed mean."""
    from scipy.stats import norm

    mean = points.mean(axis=0)
    var_items = reps.var(axis=0, ddof=1)
    half2 = float(norm.ppf(0.5 + level / 2)) ** 2 * var_items
    s = points.shape[0]
    if s > 1:
        half2 = half2 + _t_quantile(s - 1, level) ** 2 * points.var(axis=0, ddof=1) / s
    half = np.sqrt(half2)
    return Estimate(mean, mean - half, mean + half, s, n_items)


def _identity(v: np.ndarray) -> np.ndarray:
    return v


def alpha_mean(ks: Sequence[int]):
    """A ``reduce`` for :func:`estimate` / :func:`difference`: the mean over the alpha indices ``ks`` (the last
    axis of a per-alpha metric), so a claim across alpha is ONE test on the averaged difference."""
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("alpha_mean needs at least one alpha index")
    return lambda v: np.asarray(v)[..., ks].mean(axis=-1)


def estimate(per_seed: Sequence[Items], *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0,
             reduce=None) -> Estimate:
    """Mean over training seeds with a 95 % interval that adds the test items' sampling noise (bootstrap of
    the items, shared by the seeds) and the seeds' spread (Student t over the per-seed values). With one seed
    the interval is the items' alone. ``reduce`` maps the metric (its last axis, e.g. alphas) before the
    interval is formed, on every resample alike (e.g. :func:`alpha_mean`)."""
    _check(per_seed)
    f = reduce or _identity
    w = _item_weights(per_seed[0].n, n_boot, np.random.default_rng(seed))
    reps = np.mean([f(it.weighted(w)) for it in per_seed], axis=0)
    return _interval(np.stack([f(it.point()) for it in per_seed]), reps, level, per_seed[0].n)


def difference(a: Sequence[Items], b: Sequence[Items], *, level: float = LEVEL, n_boot: int = N_BOOT,
               seed: int = 0, reduce=None) -> Estimate:
    """``a - b`` with a PAIRED interval: seed k of ``a`` goes with seed k of ``b`` (both built from the same
    training seed), both scored on the same items resampled together. With unequal seed counts the first
    min(len) seeds of each are paired. ``reduce``: as :func:`estimate`'s, applied to each side."""
    k = min(len(a), len(b))
    a, b = list(a)[:k], list(b)[:k]
    _check([*a, *b])
    f = reduce or _identity
    w = _item_weights(a[0].n, n_boot, np.random.default_rng(seed))
    reps = np.mean([f(x.weighted(w)) - f(y.weighted(w)) for x, y in zip(a, b)], axis=0)
    return _interval(np.stack([f(x.point()) - f(y.point()) for x, y in zip(a, b)]), reps, level, a[0].n)


def over_seeds(points: np.ndarray, *, level: float = LEVEL) -> Estimate:
    """Mean over training seeds (axis 0 of ``points``) with a Student-t interval of the seeds' spread only,
    for quantities without per-item arrays (e.g. accuracy after every fine-tuning epoch)."""
    pts = np.asarray(points, dtype=np.float64)
    zero = np.zeros((2, *pts.shape[1:]))
    return _interval(pts, zero, level, 0) if pts.shape[0] > 1 else Estimate(pts[0], pts[0], pts[0], 1, 0)


# ------------------------------------------------------------------------------------------ sentences
def direction(lo: float, hi: float) -> str:
    """``higher`` when the interval of a difference lies above 0, ``lower`` below, else ``within noise``."""
    if lo > 0:
        return "higher"
    if hi < 0:
        return "lower"
    return "within noise"


def compare_text(name_a: str, name_b: str, diff: Estimate, *, index=(), scale: float = 1.0, unit: str = "",
                 fmt: str = ".3f") -> str:
    """A sentence on ``a - b`` at ``index`` generated from the interval, e.g.
    "i-MAE is higher than MAE by 0.031 (95 % CI 0.012 to 0.050, 3 seeds)"; "lower than ... by" gives the amount
    and its interval as positive numbers."""
    m, lo, hi = (float(np.asarray(x)[index]) * scale for x in (diff.mean, diff.lo, diff.hi))
    seeds = f"{diff.n_seeds} training seeds" if diff.n_seeds > 1 else "one training seed, test-item resampling only"
    d = direction(lo, hi)
    if d == "within noise":
        ci = f"95 % CI {lo:{fmt}} to {hi:{fmt}}{unit}, {seeds}"
        return f"{name_a} and {name_b} are within noise of each other (difference {m:+{fmt}}{unit}; {ci})"
    if d == "lower":  # "lower by" a positive amount, so its interval is of that amount too: no sign flip
        m, lo, hi = -m, -hi, -lo
    return f"{name_a} is {d} than {name_b} by {m:{fmt}}{unit} (95 % CI {lo:{fmt}} to {hi:{fmt}}{unit}, {seeds})"


def moves_text(moves: Mapping[tuple[str, str], tuple[float, float]], *, baseline: str = "the baseline") -> str:
    """One clause per variant: which measures its difference to ``baseline`` moves beyond the noise.

    ``moves`` maps (variant, measure) to the (lo, hi) interval of ``variant - baseline``, in the order to
    report; measures within noise are left out, and so are variants with none. E.g.
    "mask ratio 0.5: refit-free R² higher, PSNR lower; no distillation: LS R² lower".
    Returns "" when nothing moves."""
    by_variant: dict[str, list[str]] = {}
    for (variant, measure), (lo, hi) in moves.items():
        d = direction(float(lo), float(hi))
        by_variant.setdefault(variant, [])
        if d != "within noise":
            by_variant[variant].append(f"{measure} {d}")
    return "; ".join(f"{v}: {', '.join(ms)}" for v, ms in by_variant.items() if ms)


def summary_rows(estimates: Mapping[str, Estimate], *, index_name: str | None = None, index=None,
                 scale: float = 1.0) -> list[dict]:
    """Tidy rows {model, [index_name], mean, lo, hi, seeds} for tables and plots with bands."""
    rows = []
    for label, est in estimates.items():
        mean = np.atleast_1d(est.mean)
        for k in range(mean.shape[0]):
            row = {"model": label}
            if index_name is not None:
                row[index_name] = index[k] if index is not None else k
            row.update(mean=float(mean[k]) * scale, lo=float(np.atleast_1d(est.lo)[k]) * scale,
                       hi=float(np.atleast_1d(est.hi)[k]) * scale, seeds=est.n_seeds)
            rows.append(row)
    return rows


def fmt_ci(mean: float, lo: float, hi: float, fmt: str = ".3f") -> str:
    """``0.123 [0.100, 0.140]``."""
    return f"{mean:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"

