"""The campaign's stages, in order of value, and the evaluation options they use.

A stage trains zero or more models (:class:`TrainSpec`), then runs evaluations ``(model, what)`` and/or the
throughput benchmark. Models are named by reference:

* ``mae`` / ``imae``: the campaign's teacher and standard i-MAE (stages ``mae`` and ``imae``), whose fp16
  weights are committed to the repository and loaded from there by later windows;
* ``untrained`` / ``untrained:<seed>``: the untrained-encoder control (:func:`imae.controls.untrained_run`);
* ``@<key>``: a model trained earlier in the same stage.

Epochs are ``free`` (the planner fixes them from the measured throughput and the stage's share of the
window: the first training of the teacher and of the i-MAE) or ``fixed:mae`` / ``fixed:imae`` (the schedule
those first runs fixed, from the manifest: every later i-MAE variant, control and seed is trained exactly as
long as the run it is compared with).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .. import evaluations
from ..design import ABLATIONS, NO_DISTILLATION, SAME_PROB_VARIANTS, TEACHER_RECIPE
from ..metrics import WHATS


def _frozen_except(*skip: str) -> tuple[str, ...]:
    """The registered evaluations of a frozen model (:mod:`imae.evaluations`), without ``skip``."""
    return tuple(w for w in evaluations.frozen() if w not in skip)


@dataclass(frozen=True)
class TrainSpec:
    key: str  # model name inside the stage
    method: str  # mae | imae
    epochs: str = "fixed:imae"  # free | fixed:mae | fixed:imae
    overrides: dict = field(default_factory=dict)
    teacher: str | None = None  # model ref (i-MAE's teacher)
    init_from: str | None = None  # model ref (an MAE continued from a trained one)
    seed: int = 0
    schedule_of: str | None = None  # take blr/warmup/min_lr of this method's preset schedule (equal compute)
    weights_name: str | None = None  # stored (committed) weights name, e.g. "cifar-mae"


@dataclass(frozen=True)
class Stage:
    name: str
    why: str
    needs: tuple[str, ...] = ()
    train: tuple[TrainSpec, ...] = ()
    evals: tuple[tuple[str, str], ...] = ()  # (model ref, what), run in this order
    reference: str = "mae"  # the separability reference / reconstruction baseline of every model evaluated
    throughput: bool = False
    share: float = 1.0  # weight of a free-epoch stage in the window's training time
    itemized: bool = False  # evaluations are kept one by one across windows (else the stage is all or nothing)

    @property
    def commit(self) -> bool:
        return any(t.weights_name for t in self.train)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def same_prob_stage(same_prob: float) -> str:
    """The stage that trains the i-MAE with ``data.same_prob = same_prob`` (``imae-sp0``, ``imae-sp0.5``)."""
    return f"imae-sp{same_prob:g}"


def ablation_stage(label: str) -> str:
    """The stage of the ablation ``label`` of :data:`imae.design.ABLATIONS` (``ablation-no-distillation``)."""
    return f"ablation-{_slug(label)}"


def default_stages(preset: str) -> list[Stage]:
    """Every stage of the campaign, in the order a window takes them: what decides a verdict first
    (``python -m imae campaign --list`` prints each stage and why). Evaluations come from the registry
    (:mod:`imae.evaluations`): a newly registered one is run wherever its kind is. What the variants change
    is the experiment design (:mod:`imae.design`), shared with the notebooks."""
    teacher_recipe = dict(TEACHER_RECIPE)
    clean = evaluations.clean_classifiers()
    mixture = tuple(w for w in evaluations.frozen() if w not in clean)
    by_model = [(m, w) for w in clean for m in ("mae", "untrained", "imae")]
    by_model += [(m, w) for w in mixture for m in ("mae", "imae", "untrained")]
    # the equal-compute MAE and the seeds are compared with the standard i-MAE on every frozen metric but the
    # reconstruction (an MAE's PSNR is on another target type)
    compared = _frozen_except("reconstruction")
    stages = [
        Stage("mae", "the MAE teacher: baseline, teacher and i-MAE initialisation", share=0.6,
              train=(TrainSpec("mae", "mae", "free", teacher_recipe, weights_name=f"{preset}-mae"),)),
        Stage("imae", "the standard i-MAE, distilled from the teacher", needs=("mae",), share=0.4,
              train=(TrainSpec("imae", "imae", "free", teacher="mae", weights_name=f"{preset}-imae"),)),
        Stage("eval", "every chapter's evaluations of MAE, i-MAE and the untrained control (every claim's gate)",
              needs=("mae", "imae"), evals=tuple(by_model), itemized=True),
        Stage("mae-continued", "equal-compute control: the teacher trained on for the i-MAE's schedule "
                               "('supported' needs the i-MAE to beat it too)", needs=("mae", "imae"),
              train=(TrainSpec("mae-continued", "mae", "fixed:imae", teacher_recipe, init_from="mae",
                               schedule_of="imae"),),
              evals=tuple(("@mae-continued", w) for w in compared)),
    ]
    for seed in (1, 2):
        stages.append(Stage(
            f"seed{seed}", f"training seed {seed}: MAE, i-MAE, MAE continued and untrained again (intervals over "
                           "seeds; one seed is at most 'suggestive'), and separability against an INDEPENDENT "
                           "reference, the seed-0 teacher", needs=("mae", "imae"),
            reference="mae",
            train=(TrainSpec("mae", "mae", "fixed:mae", teacher_recipe, seed=seed),
                   TrainSpec("imae", "imae", "fixed:imae", teacher="@mae", seed=seed),
                   TrainSpec("mae-continued", "mae", "fixed:imae", teacher_recipe, init_from="@mae",
                             schedule_of="imae", seed=seed)),
            evals=tuple((m, w) for w in compared for m in ("@mae", "@imae", "@mae-continued", f"untrained:{seed}"))))
    stages.append(Stage("finetune", "fine-tuning: MAE, i-MAE and the same recipe from scratch (untrained)",
                        needs=("mae", "imae"), evals=(("mae", "finetune"), ("imae", "finetune"),
                                                      ("untrained", "finetune")), itemized=True))
    for sp in SAME_PROB_VARIANTS:
        name = same_prob_stage(sp)
        stages.append(Stage(name, f"i-MAE with same_prob={sp:g}: does same-class sampling raise the degree of "
                                  "semantics", needs=("mae", "imae"),
                            train=(TrainSpec(name, "imae", "fixed:imae", {"data.same_prob": sp}, teacher="mae"),),
                            evals=tuple((f"@{name}", w) for w in compared)))
    # no distillation first: it tells two-way reconstruction from distillation in the separability verdict
    ablations = sorted((label for label, change in ABLATIONS.items() if change), key=lambda l: l != NO_DISTILLATION)
    for label in ablations:
        name = ablation_stage(label)
        stages.append(Stage(name, f"ablation: {label}", needs=("mae", "imae"),
                            train=(TrainSpec(name, "imae", "fixed:imae", dict(ABLATIONS[label]), teacher="mae"),),
                            evals=tuple((f"@{name}", w) for w in ("separability", "reconstruction", "linear-probe"))))
    stages.append(Stage("throughput", "the throughput table: faithful / fast / fast+compile, MAE and i-MAE (decides "
                                      "no claim)", throughput=True))
    return stages


# Evaluation options by preset ("*" applies to every evaluation that takes the option). The cifar sizes keep
# each model's full evaluation within tens of seconds of an H100 and are recorded with every result.
EVAL_OPTIONS = {
    "cifar": {
        "*": {"seed": 0},
        "knn": {"batch_size": 1024},
        "linear-probe": {"batch_size": 1024},
        "separability": {"max_images": 10000, "n_pairs": 5000, "batch_size": 1024},
        "semantics": {"max_images": 10000, "n_pairs": 5000, "batch_size": 1024},
        "reconstruction": {"n_pairs": 2000, "n_examples": 4, "batch_size": 1024},
        "finetune": {"epochs": 10, "batch_size": 256},
    },
}


def eval_options(preset: str, what: str, extra: dict | None = None) -> dict:
    """The options of evaluation ``what`` for ``preset``: the table above, then ``extra`` ({"*" or what:
    {option: value}}), each kept only where the evaluation takes it."""
    from ..metrics.evaluate import options_for

    allowed = set(options_for(what))
    table = EVAL_OPTIONS.get(preset, {"*": {"seed": 0}})
    out = {}
    for src in (table.get("*", {}), table.get(what, {}), (extra or {}).get("*", {}), (extra or {}).get(what, {})):
        out.update({k: v for k, v in src.items() if k in allowed})
    return out


def check_stage_names(names, stages: list[Stage]) -> list[str]:
    from ..errors import ConfigError

    known = [s.name for s in stages]
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(f"unknown campaign stage(s) {bad}; the stages are {known}")
    return list(names)


__all__ = ["TrainSpec", "Stage", "ablation_stage", "default_stages", "eval_options", "EVAL_OPTIONS", "same_prob_stage",
           "WHATS"]
