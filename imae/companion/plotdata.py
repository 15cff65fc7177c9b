"""Results shaped for the figures and tables: plain data (frames, rows of images), no drawing.

:mod:`imae.companion.plots` draws what these functions return; keeping the shaping apart lets it be tested without
matplotlib and read next to the figure it feeds.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..runs import read_metrics

# The columns of a reconstruction example row: (key in the examples, column title).
RECONSTRUCTION_COLUMNS = (("x_sub", "subordinate"), ("x_dom", "dominant"), ("x_mix", "mixture"),
                          ("visible", "encoder input"), ("mae", "MAE"), ("imae_sub", "i-MAE sub."),
                          ("imae_dom", "i-MAE dom."))


def metrics_frame(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run's ``metrics.jsonl`` as a DataFrame, one row per logged step (event lines dropped)."""
    return pd.DataFrame.from_records([r for r in read_metrics(run_dir) if "event" not in r])


def loss_summary(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Mean of every logged loss term over the first and the last epoch of a run, and their ratio:
    the pretraining chapter's table, and what :func:`imae.companion.notebook.training_answer` judges."""
    df = metrics_frame(run_dir)
    epoch = (df["epoch"] - 1e-9).clip(lower=0).astype(int)  # the step ending epoch e counts in epoch e
    first, last = df[epoch == epoch.min()], df[epoch == epoch.max()]
    terms = [c for c in df.columns if c.startswith("loss")]
    out = pd.DataFrame({"first epoch": first[terms].mean(), "last epoch": last[terms].mean()})
    out["last / first"] = out["last epoch"] / out["first epoch"]
    return out


def reconstruction_rows(result: dict, *, per_alpha: int = 2) -> tuple[dict, list[str]]:
    """Rows for :func:`imae.companion.plots.image_grid` from a reconstruction result's examples (``result["examples"]``,
    {alpha: examples}): ({row label: [7 images]}, column titles).

    The "encoder input" column is the mixture with the removed patches grey: all the encoder sees. The
    reconstructions show the predicted REMOVED patches, the visible ones grey: what the loss trains (a
    decoder's output at visible positions is untrained noise).
    """
    rows = {}
    for alpha, ex_ in sorted(result["examples"].items()):
        mask = ex_["mask"][..., None]
        ex_ = {**ex_, "visible": ex_["x_mix"] * (1 - mask) + 0.5 * mask}
        for k in ("mae", "imae_sub", "imae_dom"):
            ex_[k] = ex_[k] * mask + 0.5 * (1 - mask)
        for i in range(min(per_alpha, len(ex_["x_sub"]))):
            rows[f"α={alpha:.2f} #{i + 1}"] = [np.asarray(ex_[k][i]) for k, _ in RECONSTRUCTION_COLUMNS]
    return rows, [t for _, t in RECONSTRUCTION_COLUMNS]
