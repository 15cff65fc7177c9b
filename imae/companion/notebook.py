"""What the chapter notebooks use to start (:func:`setup`) and to put numbers, sentences, figures and tables
on the page (myst-nb glue).

Every sentence that judges a difference is generated from its interval (:mod:`imae.companion.stats`), never typed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import stats
from ..parameters import parameters_in
from ..runs import write_json
from .verdict import Evidence, judge


def setup(namespace: dict) -> dict:
    """The first call of every chapter notebook, after its imports: ``P = nb.setup(globals())``.

    Checks the notebook's parameters (the names of :data:`imae.parameters.PARAMETER_TYPES` defined in
    ``namespace``, as the parameters cell and papermill set them) and returns them, unchanged, as
    {name: value}. A wrong type stops the notebook here, with a message that says how to pass it, before
    anything trains. The names a notebook works with come from one import line (:mod:`imae.companion.chapter`).
    """
    return parameters_in(namespace)


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


def glue_html(name: str, html: str) -> None:
    """Raw HTML (e.g. :func:`imae.companion.plots.frame_slider`) for ``{glue:figure}`name```."""
    from IPython.display import HTML
    from myst_nb import glue

    glue(name, HTML(html), display=False)


def write_record(results_dir: str | os.PathLike, name: str, record: dict) -> None:
    """The chapter's JSON record, as ``<results>/<name>.json`` (what the book's status table reads) and as
    ``<results>/<preset>/<name>.json``, so records of several scales coexist and the Findings page can pick
    the largest."""
    write_json(Path(results_dir) / f"{name}.json", record)
    write_json(Path(results_dir) / str(record["preset"]) / f"{name}.json", record)


def markdown_table(df) -> str:
    """``df`` as a Markdown (pipe) table: the index becomes the first column(s), floats get 4 significant
    digits, ``|`` is escaped."""
    import pandas as pd

    flat = df if isinstance(df.index, pd.RangeIndex) and df.index.name is None else df.reset_index()
    cols = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in flat.columns]

    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            text = "" if not np.isfinite(v) else (f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}")
        else:
            text = "" if v is None else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in flat.itertuples(index=False)]
    return "\n".join(lines)


def table(df, csv: str | os.PathLike, name: str) -> None:
    """Write ``df`` to ``csv`` and glue it as Markdown under ``name``; the page shows it, numbered and
    captioned, where a Markdown cell holds :func:`table_directive` (so the text can ``{numref}`` it)."""
    from IPython.display import Markdown
    from myst_nb import glue

    path = Path(csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path)
    glue(name, Markdown(markdown_table(df)), display=False)


def table_directive(name: str, caption: str, csv: str) -> str:
    """The Markdown cell that shows glued table ``name`` as a numbered table labelled ``name`` with dashes
    (``tbl_ls`` -> ``tbl-ls``), its caption and a CSV download link (``csv`` relative to the page)."""
    return (f":::{{table}} {caption} ({{download}}`CSV <{csv}>`)\n:name: {name.replace('_', '-')}\n\n"
            f"```{{glue:md}} {name}\n:format: myst\n```\n:::\n")


def answer(main: stats.Estimate, signal: stats.Estimate, k: int | None, *, what: str,
           a: str = "i-MAE", b: str = "the MAE", **fmt) -> str:
    """The chapter's one-sentence answer, generated from two paired differences: ``signal`` (trained MAE −
    untrained encoder) decides whether the measurement sees training at all; ``main`` (i-MAE − MAE) is
    the comparison. ``fmt``: :func:`imae.companion.stats.compare_text`'s scale, unit and fmt."""
    idx = () if k is None else k
    s_lo, s_hi = (float(np.asarray(x).reshape(-1)[0 if k is None else k]) for x in (signal.lo, signal.hi))
    if stats.direction(s_lo, s_hi) != "higher":
        return (f"Not measurable at this scale: on {what} the trained MAE does not beat its untrained encoder "
                f"beyond the noise ({stats.compare_text('the MAE', 'the untrained encoder', signal, index=idx, **fmt)}), "
                f"so no difference between trained models is reported as a finding.")
    return f"On {what}, {stats.compare_text(a, b, main, index=idx, **fmt)}."


def training_answer(summaries: dict) -> str:
    """The pretraining chapter's answer from :func:`imae.companion.plotdata.loss_summary` tables:
    {model: [one table per training seed]}. Says whether every loss term of every run fell from the first to
    the last epoch, and names the ones that did not."""
    rose = [f"{model} seed {i} ({term})" for model, tables in summaries.items() for i, df in enumerate(tables)
            for term, row in df.iterrows() if not row["last epoch"] < row["first epoch"]]
    k = max(len(t) for t in summaries.values())
    seeds = f"{k} training seed{'s' if k > 1 else ''}"
    models = ", ".join(summaries)
    if not rose:
        return (f"Yes: every loss term of every run ({models}; {seeds}) fell from the first epoch to the last. "
                f"Falling losses show that the optimisation works, not that the representations are useful: "
                f"that is measured against the untrained encoder in the next chapters")
    return (f"Not everywhere: these loss terms did not fall from the first epoch to the last: {', '.join(rose)}; "
            f"read their curves below before trusting the chapters built on these runs")


def claim_answer(ev: Evidence, *, what: str | None = None) -> str:
    """A chapter's answer, generated by the verdict rule (:func:`imae.companion.verdict.judge`) from the claim's
    evidence: the verdict in bold, the number it rests on, the gate and the equal-compute control, and why."""
    v = judge(ev)
    m = ev.metric
    parts = [f"**{v.label[0].upper() + v.label[1:]}.**"]
    what = what or ev.what
    if ev.main is not None and not ev.pending:
        parts.append(f"on {what}: i-MAE − MAE {ev.main.text(m)}")
    gates = [f"{k} {g.text(m)}" for k, g in ev.gates.items() if g is not None]
    if gates and not ev.pending:
        parts.append("does the metric see training: " + "; ".join(gates))
    if ev.equal_compute is not None and not ev.pending:
        parts.append(f"against the MAE trained as long: {ev.equal_compute.text(m)}")
    body = "; ".join(parts[1:])
    return f"{parts[0]} {body[0].upper() + body[1:]}. Why: {v.reason}." if body else f"{parts[0]} Why: {v.reason}."


def distillation_note(d: dict, metric: str = "r2") -> str:
    """The separability row's reading of the no-distillation i-MAE (SPEC, verdict rule 7), from the paired
    differences ``i-MAE, no distillation − MAE`` and ``i-MAE − i-MAE, no distillation`` (Estimates or
    Intervals at one alpha or alpha-averaged)."""
    from .verdict import Interval

    nd, gain = (Interval.of(d[k]) for k in ("i-MAE, no distillation − MAE", "i-MAE − i-MAE, no distillation"))
    nd_dir, gain_dir = nd.direction(), gain.direction()
    txt = (f"without distillation, i-MAE − MAE is {nd.text(metric)}; adding distillation changes it by "
           f"{gain.text(metric)}")
    if gain_dir == "higher":
        return txt + ": distillation adds separability beyond two-way reconstruction"
    if gain_dir == "lower":
        return txt + ": distillation lowers separability; the no-distillation i-MAE separates better"
    if nd_dir == "higher":
        return (txt + ": two-way reconstruction alone separates beyond the MAE, and distillation adds nothing "
                "measurable to it")
    return txt + ": neither two-way reconstruction alone nor distillation separates beyond the MAE here"
