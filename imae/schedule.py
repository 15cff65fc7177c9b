"""The learning-rate schedule of pretraining and fine-tuning alike: linear warmup, then a half-cosine from
the peak down to a floor (MAE's ``util/lr_sched.py``), evaluated at every optimizer step.

``t`` may be counted in epochs (pretraining: ``step / steps_per_epoch``, so a fractional warmup works) or in
steps (fine-tuning); ``warmup`` and ``total`` are in the same unit.
"""

from __future__ import annotations

import math


def warmup_cosine(t: float, *, warmup: float, total: float, peak: float, floor: float = 0.0,
                  ramp_to_peak: bool = False) -> float:
    """The learning rate at position ``t``: ``peak * t / warmup`` while ``t < warmup``, then
    ``floor + (peak - floor) * (1 + cos(pi * progress)) / 2`` with ``progress`` going from 0 at the end of
    warmup to 1 at ``total`` (and staying 1 after it).

    ``ramp_to_peak``: ``t == warmup`` still takes the ramp (fine-tuning counts the step being taken, so its
    warmup's last step reaches the peak on the ramp); pretraining, as MAE, is on the cosine there.
    """
    if warmup > 0 and (t < warmup or (ramp_to_peak and t == warmup)):
        return peak * t / warmup
    progress = (t - warmup) / max(total - warmup, 1e-8)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
