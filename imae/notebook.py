"""What the chapter notebooks use to put numbers, sentences, figures and tables on the page (myst-nb glue).

Every sentence that judges a difference is generated from its interval (:mod:`imae.stats`), never typed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import stats


def key(label: str) -> str:
    """A glue-key fragment for a model label: ``i-MAE`` -> ``imae``, ``MAE continued`` -> ``mae_continued``."""
    return label.lower().replace("-", "").replace(" ", "_")


def glue_text(name: str, value) -> None:
    """A number (or short plain string) for ``{glue:text}`name```."""
    from myst_nb import glue

    if isinstance(value, (bool, np.bool_)):
        value = str(value)
    elif isinstance(value, (int, np.integer)):
        value = int(value)
    elif isinstance(value, (float, np.floating)):
        value = float(value)
    glue(name, value, display=False)


def glue_md(name: str, text: str) -> None:
    """A sentence (Markdown, may hold math) for ``{glue:md}`name```."""
    from IPython.display import Markdown
    from myst_nb import glue

    glue(name, Markdown(text), display=False)


def glue_figure(name: str, fig) -> None:
    from myst_nb import glue

    glue(name, fig, display=False)


def write_record(results_dir: str | os.PathLike, name: str, record: dict) -> None:
    """The chapter's JSON record, as ``<results>/<name>.json`` (what the book's status table reads) and as
    ``<results>/<preset>/<name>.json``, so records of several scales coexist and the Findings page can pick
    the largest."""
    from .experiments import write_json

    write_json(Path(results_dir) / f"{name}.json", record)
    write_json(Path(results_dir) / str(record["preset"]) / f"{name}.json", record)


def table(df, csv: str | os.PathLike, caption: str):
    """Write ``df`` to ``csv`` (the page links it for download) and return it captioned for display."""
    path = Path(csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path)
    return df.style.set_caption(caption)


def answer(main: stats.Estimate, signal: stats.Estimate, k: int | None, *, what: str,
           a: str = "i-MAE", b: str = "the MAE", **fmt) -> str:
    """The chapter's one-sentence answer, generated from two paired differences: ``signal`` (trained MAE −
    untrained encoder) decides whether the measurement sees training at all; ``main`` (i-MAE − MAE) is
    the comparison. ``fmt``: :func:`imae.stats.compare_text`'s scale, unit and fmt."""
    idx = () if k is None else k
    s_lo, s_hi = (float(np.asarray(x).reshape(-1)[0 if k is None else k]) for x in (signal.lo, signal.hi))
    if stats.direction(s_lo, s_hi) != "higher":
        return (f"Not measurable at this scale: on {what} the trained MAE does not beat its untrained encoder "
                f"beyond the noise ({stats.compare_text('the MAE', 'the untrained encoder', signal, index=idx, **fmt)}), "
                f"so no difference between trained models is reported as a finding.")
    return f"On {what}, {stats.compare_text(a, b, main, index=idx, **fmt)}."
