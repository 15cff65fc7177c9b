"""Figures used by the notebooks. Every function returns a matplotlib Figure and never calls ``show``
(except :func:`frame_slider`, which returns a self-contained HTML slider over pre-rendered figures).
The data they draw is shaped in :mod:`imae.companion.plotdata`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .plotdata import metrics_frame

TERM_LABELS = {
    "loss_rec": "reconstruction (masked MSE)",
    "loss_rec_sub": "subordinate reconstruction",
    "loss_rec_dom": "dominant reconstruction",
    "loss_distill_sub": "subordinate distillation",
    "loss_distill_dom": "dominant distillation",
}
PALETTE = {"mae": "#4C72B0", "imae": "#DD8452", "sub": "#55A868", "dom": "#C44E52"}
# The book's text column is COLUMN_PX wide (sphinx-book-theme at a 1280 px window): a figure drawn at most that
# wide at DPI is shown at its natural size, so its MIN_PT text stays MIN_PT on the page (a wider one is shrunk).
COLUMN_PX, DPI, MIN_PT = 671, 110, 9
COLUMN_IN = COLUMN_PX / DPI


def _plt():
    import matplotlib.pyplot as plt  # in a kernel: the inline backend, whose formatter turns figures into PNGs

    plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False, "font.size": 10,
                         "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": MIN_PT,
                         "ytick.labelsize": MIN_PT, "legend.fontsize": MIN_PT})
    return plt


def _legend_below(fig, axes) -> None:
    """One legend for the figure, under its panels (never over the data): the labels of every panel, once."""
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
        if ax.get_legend():
            ax.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=MIN_PT, frameon=False)
        rows = -(-len(labels) // 3)
        fig.tight_layout(rect=(0, min(0.45, 0.075 * rows + 0.03), 1, 1))


def _done(fig):
    """Detach the figure from pyplot so a notebook shows it only where it is glued (not again at cell end)."""
    _plt().close(fig)
    return fig


def loss_curves(runs: dict, *, smooth_steps: int | None = None):
    """One panel per run: every loss term against epochs (rolling mean over ``smooth_steps``).

    Args:
        runs: {title: run directory}.
        smooth_steps: window of the rolling mean; default about a tenth of the run.
    """
    plt = _plt()
    fig, axes = plt.subplots(len(runs), 1, figsize=(COLUMN_IN, 3.0 * len(runs)), squeeze=False)
    for ax, (title, run) in zip(axes[:, 0], runs.items()):
        df = metrics_frame(run)
        window = smooth_steps or max(1, len(df) // 10)
        terms = [c for c in df.columns if c.startswith("loss_") and df[c].abs().sum() > 0]
        for col in terms:
            ax.plot(df["epoch"], df[col].rolling(window, min_periods=1).mean(), label=TERM_LABELS.get(col, col))
        ax.set(title=title, xlabel="epoch", ylabel="loss (MSE)", yscale="log")
        ax.xaxis.get_major_locator().set_params(integer=True)  # whole epochs on the axis
        ax.legend(fontsize=MIN_PT, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return _done(fig)


MODEL_COLORS = {"MAE": PALETTE["mae"], "i-MAE": PALETTE["imae"], "untrained": "#7f7f7f"}


def line_curves(curves: dict, *, xlabel: str, ylabel: str, title: str = ""):
    """Plain lines: {label: (xs, ys)}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(COLUMN_IN, 3.4))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", ms=3.5, label=label, color=MODEL_COLORS.get(label))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    _legend_below(fig, [ax])
    return _done(fig)


def image_grid(rows: dict, *, col_titles: list[str] | None = None, scale: float = 1.3):
    """A grid of RGB images: {row label: [images (H, W, 3) in [0, 1]]}."""
    plt = _plt()
    n_rows, n_cols = len(rows), max(len(v) for v in rows.values())
    scale = min(scale, (COLUMN_IN - 1.2) / n_cols)  # the row labels take about 1.2 inches
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(scale * n_cols + 1.2, scale * n_rows + 0.5), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if c < len(images):
                ax.imshow(np.clip(np.asarray(images[c]), 0, 1), interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, fontsize=MIN_PT, rotation=0, ha="right", va="center")
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=MIN_PT, rotation=30, ha="left", va="bottom")
    fig.tight_layout()
    return _done(fig)


def ablation_panels(table: pd.DataFrame, *, index: str, lo: pd.DataFrame | None = None,
                    hi: pd.DataFrame | None = None):
    """One horizontal-bar panel per measurement column; the first row (the reference run) is highlighted.
    ``lo``/``hi`` (same layout as ``table``) draw each value's 95 % interval as an error bar."""
    plt = _plt()
    cols = [c for c in table.columns if c != index]
    ncol = min(2, len(cols))
    nrow = -(-len(cols) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(COLUMN_IN, nrow * (0.32 * len(table) + 1.1)), sharey=True,
                             squeeze=False)
    for ax in axes.ravel()[len(cols):]:
        ax.set_visible(False)
    names = list(table[index])
    colors = [PALETTE["imae"] if i == 0 else "#8c8c8c" for i in range(len(names))]
    for ax, col in zip(axes.ravel(), cols):
        err = None
        if lo is not None and hi is not None:
            err = np.vstack([table[col] - lo[col], hi[col] - table[col]])
        ax.barh(range(len(names)), table[col], color=colors, xerr=err, ecolor="black", capsize=2)
        ax.axvline(table[col].iloc[0], color=PALETTE["imae"], lw=1, ls=":")
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_title(col, fontsize=MIN_PT)
    fig.tight_layout()
    return _done(fig)


ARM_STYLES = {  # the models and their controls, in every plot with intervals
    "MAE": dict(color=PALETTE["mae"], ls="-", marker="s"),
    "i-MAE": dict(color=PALETTE["imae"], ls="-", marker="o"),
    "MAE continued": dict(color="#8172B3", ls="-.", marker="^"),
    "untrained": dict(color="#7f7f7f", ls="--", marker="x"),
    "pixels": dict(color="#bcbd22", ls=":", marker="."),
    "constant": dict(color="#000000", ls=":", marker=""),
    "i-MAE, no distillation": dict(color="#DA8BC3", ls="--", marker="D"),
    "same_prob = 0.0": dict(color="#937860", ls="--", marker="v"),
    "shuffled labels": dict(color="#000000", ls=":", marker="+"),
    "mixture itself": dict(color="#17BECF", ls=":", marker="d"),
    # paired differences, coloured as the arm that is compared with the MAE
    "i-MAE − MAE": dict(color=PALETTE["imae"], ls="-", marker="o"),
    "i-MAE − MAE continued": dict(color="#8172B3", ls="-.", marker="^"),
    "i-MAE, no distillation − MAE": dict(color="#DA8BC3", ls="--", marker="D"),
    "i-MAE − i-MAE, no distillation": dict(color="#8C613C", ls=":", marker="P"),
    "MAE − untrained": dict(color="#7f7f7f", ls="--", marker="x"),
}


def bands(df: pd.DataFrame, *, ylabel: str, title: str = "", x: str = "alpha", chance: float | None = None,
          ax=None, xlabel: str | None = None, zero: bool = False):
    """Mean lines with shaded 95 % intervals, one per model/control, from a tidy table with columns
    ``model``, ``x``, ``mean``, ``lo``, ``hi`` (:func:`imae.companion.comparison.frame`)."""
    plt = _plt()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(COLUMN_IN, 3.6))
    else:
        fig = ax.figure
    for model in dict.fromkeys(df["model"]):
        d = df[df["model"] == model].sort_values(x)
        st = ARM_STYLES.get(model, {})
        ax.plot(d[x], d["mean"], ms=3.5, lw=1.6, label=model, **st)
        ax.fill_between(d[x], d["lo"], d["hi"], color=st.get("color"), alpha=0.18, lw=0)
    if chance is not None:
        ax.axhline(chance, color="grey", lw=1, ls=":", label="chance")
    if zero:  # a panel of differences: no difference is the line that matters
        ax.axhline(0.0, color="black", lw=0.8)
    ax.set(xlabel=xlabel or (r"subordinate weight $\alpha$" if x == "alpha" else x), ylabel=ylabel, title=title)
    if x == "epoch":
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=MIN_PT)
    if own:
        _legend_below(fig, [ax])
        return _done(fig)
    return ax


def band_panels(panels: dict, *, ylabel: str, x: str = "alpha", chance: float | None = None, sharey: bool = True,
                zero: bool = False):
    """Side-by-side :func:`bands` panels: {title: tidy table}; ``zero`` draws the no-difference line."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(COLUMN_IN, 3.4), squeeze=False, sharey=sharey)
    for ax, (title, df) in zip(axes[0], panels.items()):
        bands(df, ylabel=ylabel if ax is axes[0][0] else "", title=title, x=x, chance=chance, ax=ax, zero=zero)
    _legend_below(fig, axes)
    return _done(fig)


def interval_points(df: pd.DataFrame, *, ylabel: str, title: str = "", group: str | None = None,
                    chance: float | None = None):
    """Means with 95 % error bars per model (and per ``group``, e.g. the evaluation), controls in grey."""
    plt = _plt()
    groups = list(dict.fromkeys(df[group])) if group else [None]
    models = list(dict.fromkeys(df["model"]))
    fig, ax = plt.subplots(figsize=(COLUMN_IN, 3.6))
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        st = ARM_STYLES.get(model, {})
        d = df[df["model"] == model]
        if group:
            d = d.set_index(group).reindex(groups)
        xs = np.arange(len(groups)) + (k - (len(models) - 1) / 2) * width
        err = np.vstack([d["mean"] - d["lo"], d["hi"] - d["mean"]])
        ax.errorbar(xs, d["mean"], yerr=err, fmt=st.get("marker") or "o", color=st.get("color"), capsize=3,
                    label=model)
        for xx, v, top in zip(xs, d["mean"], d["hi"]):
            if np.isfinite(v):  # above the upper whisker, upright: beside it, it would run into the next arm's
                ax.annotate(f"{v:.1f}", (xx, top if np.isfinite(top) else v), textcoords="offset points",
                            xytext=(0, 3), fontsize=MIN_PT, ha="center", va="bottom", rotation=90)
    ax.margins(y=0.18)  # room for the labels above the highest whisker
    if group:
        ax.set_xticks(np.arange(len(groups)), groups)
    else:
        ax.set_xticks([])
    if chance is not None:
        ax.axhline(chance, color="grey", lw=1, ls=":", label="chance")
    ax.set(ylabel=ylabel, title=title)
    _legend_below(fig, [ax])
    return _done(fig)


def frame_slider(frames: dict, *, dpi: int = 80, interval_ms: int = 400, uid: str = "sweep") -> str:
    """A self-contained HTML slider (with a play button) over pre-rendered figures: {label: Figure}.

    Every frame is an inline PNG (base64) and the controls are a few lines of inline JavaScript: nothing is
    fetched from the network when the book is built or viewed. Without JavaScript the first frame shows.
    """
    import base64
    import html
    import io
    import json

    if not frames:
        raise ValueError("frame_slider needs at least one frame")
    labels, images = [], []
    for label, fig in frames.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        _plt().close(fig)
        labels.append(str(label))
        images.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    root = f"imae-slider-{uid}"
    imgs = "".join(f'<img src="data:image/png;base64,{b}" alt="{html.escape(lab)}" style="max-width:100%;'
                   f'display:{"block" if i == 0 else "none"}">' for i, (lab, b) in enumerate(zip(labels, images)))
    return (f'<div id="{root}" class="imae-slider">{imgs}'
            f'<div style="display:flex;gap:0.6em;align-items:center;margin-top:0.3em">'
            f'<button type="button" aria-label="play">&#9654;</button>'
            f'<input type="range" min="0" max="{len(images) - 1}" value="0" step="1" style="flex:1" '
            f'aria-label="frame">'
            f'<span style="min-width:7em;font-family:monospace">{html.escape(labels[0])}</span></div></div>'
            f'<script>(function(){{var r=document.getElementById("{root}");if(!r)return;'
            f'var im=r.querySelectorAll("img"),s=r.querySelector("input"),t=r.querySelector("span"),'
            f'b=r.querySelector("button"),L={json.dumps(labels)},timer=null;'
            f'function show(i){{for(var k=0;k<im.length;k++)im[k].style.display=k==i?"block":"none";'
            f's.value=i;t.textContent=L[i];}}'
            f's.addEventListener("input",function(){{show(+s.value);}});'
            f'b.addEventListener("click",function(){{if(timer){{clearInterval(timer);timer=null;b.innerHTML="&#9654;";'
            f'return;}}b.innerHTML="&#10074;&#10074;";timer=setInterval(function(){{show((+s.value+1)%im.length);}},'
            f'{int(interval_ms)});}});}})();</script>')
