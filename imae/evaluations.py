"""Every evaluation the library knows, in ONE registry that the API, the command line, the campaign, its
planner, the notebooks and the benchmarks all read.

An evaluation is a function in :mod:`imae.metrics` plus what the rest of the library needs to know about it:
what it takes (``input``), whether it trains (``trains``), its headline numbers for logs (``summary``) and its
cost model (``forwards``, ``fits``). Adding a metric is one module and one :func:`register` call; an unknown
name is an error that names the known ones. This module does not import torch: the command line checks its
arguments against it before loading anything heavy (the function is imported on first use).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .errors import ConfigError

INPUTS = ("model+reference", "model", "encoder")


@dataclass(frozen=True)
class Evaluation:
    """One evaluation.

    Attributes:
        name: the ``what`` of ``evaluate(run, what)`` and ``--what``.
        function: ``"module:function"``, imported on first use; called as ``fn(model, reference, data, ...)``
            (input ``model+reference``), ``fn(model, data, ...)`` (``model``: a loaded MAE / i-MAE) or
            ``fn(encoder, data, ...)`` (``encoder``: the frozen MAE encoder; such an evaluation also runs on an
            exported encoder, unless it trains).
        input: one of :data:`INPUTS`.
        description: a line for help texts.
        reference: ``always`` | ``imae`` (only an i-MAE's result uses it) | ``never``.
        trains: the evaluation trains a copy of the model (fine-tuning): never part of a frozen-feature sweep.
        summary: result -> {short key: number}, the headline for logs and the campaign's records.
        forwards: (options, n_train, n_test, n_alphas) -> encoder forwards (image equivalents), the planner's
            cost model.
        fits: (options, n_pools, n_alphas) -> linear-classifier fits it makes (the planner's cost model).
    """

    name: str
    function: str
    input: str
    description: str
    reference: str = "never"
    trains: bool = False
    summary: Callable[[dict], dict] | None = field(default=None, compare=False)
    forwards: Callable[..., float] | None = field(default=None, compare=False)
    fits: Callable[..., int] | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.input not in INPUTS:
            raise ValueError(f"evaluation {self.name!r}: input={self.input!r}; choose one of {INPUTS}")
        if self.reference not in ("always", "imae", "never"):
            raise ValueError(f"evaluation {self.name!r}: reference={self.reference!r}; choose always, imae or never")
        if ":" not in self.function:
            raise ValueError(f"evaluation {self.name!r}: function={self.function!r} must be 'module:function'")

    def load(self) -> Callable:
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def clean(self) -> bool:
        """Scores the encoder on clean images (kNN, linear probe, fine-tuning)."""
        return self.input == "encoder"

    def uses_reference(self, kind: str) -> bool:
        """Whether a model of ``kind`` (``mae`` | ``imae``) is scored against a reference encoder."""
        return self.reference == "always" or (self.reference == "imae" and kind == "imae")


EVALUATIONS: dict[str, Evaluation] = {}


def register(ev: Evaluation, *, replace: bool = False) -> Evaluation:
    """Add ``ev`` to the registry (``replace`` to redefine a name)."""
    if ev.name in EVALUATIONS and not replace:
        raise ValueError(f"an evaluation named {ev.name!r} is registered already; pass replace=True to redefine it")
    EVALUATIONS[ev.name] = ev
    return ev


def unregister(name: str) -> None:
    EVALUATIONS.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered evaluation, in registration order."""
    return tuple(EVALUATIONS)


def get(name: str) -> Evaluation:
    """The registered evaluation ``name``, or a ConfigError naming the known ones (and the closest)."""
    if name not in EVALUATIONS:
        close = difflib.get_close_matches(str(name), list(EVALUATIONS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown evaluation what={name!r}; choose one of {list(EVALUATIONS)}.{hint}")
    return EVALUATIONS[name]


def clean_classifiers() -> tuple[str, ...]:
    """The frozen-feature classifiers of clean images (kNN, linear probe): they run on any exported encoder."""
    return tuple(n for n, e in EVALUATIONS.items() if e.clean and not e.trains)


def frozen() -> tuple[str, ...]:
    """Every evaluation of a frozen model (all but those that train)."""
    return tuple(n for n, e in EVALUATIONS.items() if not e.trains)


# ----------------------------------------------------------------------------------- the headline alpha
HEADLINE_ALPHA = 0.3  # the subordinate weight every chapter's answer and the Findings page quote


def headline_index(alphas: Sequence[float]) -> int:
    """The index of the alpha nearest :data:`HEADLINE_ALPHA` in ``alphas`` (the lower one on a tie): the one
    lookup the evaluations' summaries, every chapter, the Findings page and the campaign's summaries use
    (:mod:`imae.companion.stats` hands it to the notebooks)."""
    if not len(alphas):
        raise ValueError("no alphas to pick the headline alpha from")
    return min(range(len(alphas)), key=lambda i: (abs(float(alphas[i]) - HEADLINE_ALPHA), float(alphas[i])))


# ----------------------------------------------------------------------------------- the built-in ones


def _acc_summary(r: dict) -> dict:
    return {p: round(100 * a, 2) for p, a in r["accuracy"].items()}


def _ls_summary(r: dict) -> dict:
    k = headline_index(r["alphas"])
    return {f"ls_sub_{p}@{r['alphas'][k]}": round(v["sub"]["r2"][k], 4) for p, v in r["ridge"].items()}


def _ds_summary(r: dict) -> dict:
    k = headline_index(r["alphas"])
    return {f"ds_sub_{p}@{r['alphas'][k]}": round(v["sub"][k], 4) for p, v in r["accuracy"].items()}


def _rec_summary(r: dict) -> dict:
    key = "imae" if r.get("imae") else "mae"
    return {f"psnr_masked_sub@{r['alphas'][0]}": round(r[key]["sub"]["psnr_masked"][0], 2)}


def _pairs(options: dict, n_train: int, n_test: int) -> tuple[int, int]:
    p = options.get("n_pairs")
    return (p or n_train), (p or n_test)


register(Evaluation(
    "knn", "imae.metrics.probes:knn", "encoder", "kNN accuracy on clean images (k = 20, cosine, T = 0.07)",
    summary=_acc_summary, forwards=lambda o, ntr, nte, a: ntr + nte, fits=lambda o, p, a: 0))
register(Evaluation(
    "linear-probe", "imae.metrics.probes:linear_probe", "encoder",
    "linear-probe accuracy on clean images (logistic regression on frozen, standardised features)",
    summary=_acc_summary, forwards=lambda o, ntr, nte, a: ntr + nte, fits=lambda o, p, a: p))
register(Evaluation(
    "separability", "imae.metrics.separability:linear_separability", "model+reference",
    "linear separability LS(alpha): ridge R² from the mixture's feature to the reference's feature of each image",
    reference="always", summary=_ls_summary,
    forwards=lambda o, ntr, nte, a: sum(_pairs(o, ntr, nte)) * (a + 3), fits=lambda o, p, a: 0))
register(Evaluation(
    "semantics", "imae.metrics.semantics:degree_of_semantics", "model",
    "degree of semantics DS(alpha): a linear classifier names each image's class from the mixture's feature",
    summary=_ds_summary, forwards=lambda o, ntr, nte, a: sum(_pairs(o, ntr, nte)) * a + ntr + nte,
    fits=lambda o, p, a: p * (1 + (3 if o.get("shuffled_control") else 2) * a)))
register(Evaluation(
    "reconstruction", "imae.metrics.reconstruction:reconstruction_quality", "model+reference",
    "two-way reconstruction PSNR of the removed patches, against the mixture itself", reference="imae",
    summary=_rec_summary, forwards=lambda o, ntr, nte, a: _pairs(o, ntr, nte)[1] * a * 3, fits=lambda o, p, a: 0))
register(Evaluation(
    "finetune", "imae.metrics.finetune:finetune", "encoder",
    "fine-tuning (linear probe, then the whole encoder) on every training image; accuracy on the test images",
    trains=True, summary=lambda r: {"accuracy": round(100 * r["accuracy"], 2)},
    forwards=lambda o, ntr, nte, a: o.get("epochs", 10) * (3 * ntr + nte) + ntr + nte, fits=lambda o, p, a: 1))
