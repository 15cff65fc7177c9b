"""The experiment design, in one place: what the notebooks and the GPU campaign both train.

Config overrides (``"section.field": value``, as :func:`imae.config.build_config` takes them), nothing else:
this module imports nothing, so the configuration, the notebooks' glue (:mod:`imae.companion.experiments` re-exports
``ABLATIONS``) and the campaign (:mod:`imae.campaign.stages`) all read the same design.

* :data:`TEACHER_RECIPE`: the MAE teacher / baseline learns per-patch-normalised pixels, the i-MAE student
  plain pixels (the ``small`` preset's MAE and every campaign MAE);
* :data:`ABLATIONS`: the i-MAE variants of the ablation chapter, each a change to the standard run;
* :data:`SAME_PROB_VARIANTS`: the pair policies the same-class sampling study compares with the standard
  i-MAE (``data.same_prob = 1``).
"""

from __future__ import annotations

TEACHER_RECIPE = {"model.norm_pix_loss": True}

# i-MAE variants of the ablation chapter: what changes relative to the standard run.
ABLATIONS = {
    "standard": {},
    "mask ratio 0.5": {"train.mask_ratio": 0.5},
    "mask ratio 0.9": {"train.mask_ratio": 0.9},
    "fixed alpha = 0.3": {"imae.alpha_mode": "fixed", "imae.alpha": 0.3},
    "no distillation": {"imae.w_distill_sub": 0.0, "imae.w_distill_dom": 0.0},
    "teacher sees the mixture": {"imae.teacher_input": "mixed"},
    "norm-pix targets": {"model.norm_pix_loss": True},
}

# The ablation that tells two-way reconstruction from distillation in the separability verdict.
NO_DISTILLATION = "no distillation"

# Same-class sampling: the i-MAE trained with these values of data.same_prob besides the standard 1.0.
SAME_PROB_VARIANTS = (0.0, 0.5)


def section(overrides: dict, name: str) -> dict:
    """The fields of one config section in ``overrides``: ``section({"model.x": 1}, "model") == {"x": 1}``."""
    return {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith(name + ".")}


__all__ = ["ABLATIONS", "NO_DISTILLATION", "SAME_PROB_VARIANTS", "TEACHER_RECIPE", "section"]
