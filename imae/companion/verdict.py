"""The verdict rule: one rule, applied by code, to every claim at every scale (SPEC, "Verdict rule").

A claim "the claimed arm (i-MAE) is better than the MAE on metric M" is judged from its :class:`Evidence`,
in this order:

1. *Measurable*: every gate (the trained MAE − the untrained encoder on M itself, same α range and component;
   for fine-tuning also "fine-tuned MAE − linear probe") lies above 0 beyond the noise; else
   ``not measurable at this scale``. A missing gate is not a passed one.
2. *Reference*: which measurement is the headline is the caller's choice (for LS: the independent reference);
   the rule judges what it is given.
3. *Direction and size*: the paired interval of claimed − MAE wholly above 0 → detected; wholly below →
   ``contradicted``; else ``not detected``. Detected but wholly below the smallest effect of interest
   (:data:`SMALLEST_EFFECT`) → ``negligible``.
4. *Equal compute*: ``supported`` needs the same against the MAE continued (trained as long as the i-MAE);
   within noise or reversed there → ``not detected against equal compute``; negligible there →
   ``negligible``; not run yet → ``supported before the equal-compute control``. Claims where the two arms
   already had equal compute (``equal_compute_applies=False``, e.g. two pair policies) skip this step.
5. *Seeds*: with one training seed a detected difference is at most ``suggestive (one training seed)``
   (or ``suggestive of the opposite (one training seed)``).

Across α the caller passes evidence on the α-AVERAGED difference (one test; :func:`imae.companion.stats.difference`'s
``reduce``), never a count of per-α calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

SMALLEST_EFFECT = {"r2": 0.01, "accuracy": 0.005, "psnr": 0.2}  # accuracies as fractions: 0.5 points
UNITS = {"r2": (1.0, "", "+.3f"), "accuracy": (100.0, " pts", "+.1f"), "psnr": (1.0, " dB", "+.2f")}

SUPPORTED = "supported"
BEFORE_EQUAL = "supported before the equal-compute control"
SUGGESTIVE = "suggestive (one training seed)"
SUGGESTIVE_AGAINST = "suggestive of the opposite (one training seed)"
NEGLIGIBLE = "negligible"
NOT_DETECTED = "not detected"
NOT_VS_EQUAL = "not detected against equal compute"
CONTRADICTED = "contradicted"
NOT_MEASURABLE = "not measurable at this scale"
PENDING = "pending"
LABELS = (SUPPORTED, BEFORE_EQUAL, SUGGESTIVE, NEGLIGIBLE, NOT_DETECTED, NOT_VS_EQUAL, SUGGESTIVE_AGAINST,
          CONTRADICTED, NOT_MEASURABLE, PENDING)


@dataclass(frozen=True)
class Interval:
    """A difference's mean and 95 % interval (floats, in the metric's own unit: R², fraction, dB)."""

    mean: float
    lo: float
    hi: float

    def __post_init__(self):
        if not self.lo <= self.hi:
            raise ValueError(f"interval [{self.lo}, {self.hi}] is not ordered")

    @classmethod
    def of(cls, d, k: int | None = None) -> "Interval":
        """From an :class:`imae.companion.stats.Estimate`, its ``as_dict()`` record or a ``(mean, lo, hi)`` tuple, at
        index ``k`` of a per-α one."""
        import numpy as np

        if isinstance(d, cls):
            return d
        if isinstance(d, (tuple, list)) and len(d) == 3:
            d = dict(zip(("mean", "lo", "hi"), d))

        get = (lambda n: d[n]) if isinstance(d, Mapping) else (lambda n: getattr(d, n))

        def pick(n):
            v = np.asarray(get(n), dtype=float).reshape(-1)
            if k is None and v.size != 1:
                raise ValueError(f"a per-α estimate ({v.size} values) needs an index k")
            return float(v[0 if k is None else k])

        return cls(pick("mean"), pick("lo"), pick("hi"))

    def direction(self) -> str:
        return "higher" if self.lo > 0 else "lower" if self.hi < 0 else "within noise"

    def text(self, metric: str) -> str:
        scale, unit, fmt = UNITS[metric]
        m, lo, hi = (x * scale for x in (self.mean, self.lo, self.hi))
        return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]{unit}"

    def as_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi}


@dataclass
class Evidence:
    """What one claim is judged on, at one scale.

    Attributes:
        metric: ``r2`` | ``accuracy`` | ``psnr`` (picks the smallest effect of interest and the unit).
        main: claimed − MAE (e.g. i-MAE − MAE), paired.
        gates: {name: interval}, each must lie above 0 for the metric to count as measurable (None: missing).
        equal_compute: claimed − MAE continued; None while that run does not exist.
        equal_compute_applies: False where both arms had the same compute by design.
        n_seeds: training seeds behind the intervals.
        what: the measurement in words (for the table).
        details: {name: interval} shown beside the verdict, never judged (secondary columns, controls).
        notes: sentences the table shows with the row.
        pending: what the missing evidence waits for (e.g. "campaign stage seed1"); the verdict is then
            ``pending`` whatever else is given.
    """

    metric: str
    main: Interval | None
    gates: dict[str, Interval | None]
    n_seeds: int
    what: str = ""
    equal_compute: Interval | None = None
    equal_compute_applies: bool = True
    details: dict[str, Interval] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pending: str | None = None

    def __post_init__(self):
        if self.metric not in SMALLEST_EFFECT:
            raise ValueError(f"unknown metric {self.metric!r}; choose one of {sorted(SMALLEST_EFFECT)}")

    def as_dict(self) -> dict:
        iv = lambda x: None if x is None else x.as_dict()  # noqa: E731
        return {"metric": self.metric, "what": self.what, "main": iv(self.main), "n_seeds": self.n_seeds,
                "gates": {k: iv(v) for k, v in self.gates.items()}, "equal_compute": iv(self.equal_compute),
                "equal_compute_applies": self.equal_compute_applies,
                "details": {k: iv(v) for k, v in self.details.items()}, "notes": list(self.notes),
                "pending": self.pending}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Evidence":
        iv = lambda x: None if x is None else Interval(x["mean"], x["lo"], x["hi"])  # noqa: E731
        return cls(metric=d["metric"], main=iv(d.get("main")), gates={k: iv(v) for k, v in d["gates"].items()},
                   n_seeds=int(d["n_seeds"]), what=d.get("what", ""), equal_compute=iv(d.get("equal_compute")),
                   equal_compute_applies=bool(d.get("equal_compute_applies", True)),
                   details={k: iv(v) for k, v in (d.get("details") or {}).items() if v is not None},
                   notes=list(d.get("notes") or ()), pending=d.get("pending"))


@dataclass(frozen=True)
class Verdict:
    label: str
    reason: str


def size(iv: Interval, metric: str) -> str:
    """``detected`` | ``negligible`` | ``not detected`` | ``contradicted`` for claimed − base on ``metric``."""
    d = iv.direction()
    if d == "within noise":
        return "not detected"
    if d == "lower":
        return "contradicted"
    return "negligible" if iv.hi < SMALLEST_EFFECT[metric] else "detected"


def judge(ev: Evidence) -> Verdict:
    """The verdict on one claim from its evidence (module docstring: the rule's steps in order)."""
    m = ev.metric
    sesoi = f"{UNITS[m][0] * SMALLEST_EFFECT[m]:g}{UNITS[m][1] or ' R²'}"
    if ev.pending:
        return Verdict(PENDING, f"waits for {ev.pending}")
    # 1. measurable
    if not ev.gates:
        return Verdict(NOT_MEASURABLE, "no control tells training from no training on this metric")
    for name, g in ev.gates.items():
        if g is None:
            return Verdict(NOT_MEASURABLE, f"{name}: not measured yet, so the metric is not shown to see training")
        if g.direction() != "higher":
            return Verdict(NOT_MEASURABLE, f"{name} is {g.text(m)}: not above 0 beyond the noise")
    if ev.main is None:
        return Verdict(PENDING, "the comparison has not been measured yet")
    one = ev.n_seeds < 2
    seeds = "one training seed, intervals over test items only" if one else f"{ev.n_seeds} training seeds"
    # 3. direction and size
    s = size(ev.main, m)
    if s == "not detected":
        return Verdict(NOT_DETECTED, f"the interval includes 0; {seeds}")
    if s == "contradicted":
        return Verdict(SUGGESTIVE_AGAINST if one else CONTRADICTED, f"lower beyond the noise; {seeds}")
    if s == "negligible":
        return Verdict(NEGLIGIBLE, f"above 0 but wholly below the smallest effect of interest, {sesoi}; {seeds}")
    # 4. equal compute
    before = False
    if ev.equal_compute_applies:
        if ev.equal_compute is None:
            before = True
        else:
            e = size(ev.equal_compute, m)
            if e in ("not detected", "contradicted"):
                return Verdict(NOT_VS_EQUAL, f"against the MAE trained as long, {ev.equal_compute.text(m)}, "
                                             f"the difference is {'within noise' if e == 'not detected' else 'reversed'}: "
                                             f"extra training explains it; {seeds}")
            if e == "negligible":
                return Verdict(NEGLIGIBLE, f"against the MAE trained as long, wholly below {sesoi}; {seeds}")
    # 5. seeds
    if one:
        return Verdict(SUGGESTIVE, "detected with one training seed, intervals over test items only"
                       + ("; the equal-compute control has not run yet" if before else ""))
    if before:
        return Verdict(BEFORE_EQUAL, f"detected, {seeds}; the MAE trained as long has not run yet")
    return Verdict(SUPPORTED, f"detected against the MAE and against the MAE trained as long; {seeds}")
