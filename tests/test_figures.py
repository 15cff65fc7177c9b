"""The book's figures as a reader sees them: drawn no wider than the text column (so they are not shrunk),
every piece of text at least 9 pt at that size, and legends outside the data."""

import numpy as np
import pandas as pd
import pytest

from imae.companion import plots


def _frame(models, alphas=(0.1, 0.3, 0.5)):
    rows = [{"model": m, "alpha": a, "mean": 0.1 * i + a, "lo": 0.1 * i + a - 0.02, "hi": 0.1 * i + a + 0.02,
             "seeds": 3} for i, m in enumerate(models) for a in alphas]
    return pd.DataFrame(rows)


def _texts(fig):
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


FIGURES = {
    "band_panels": lambda: plots.band_panels({"subordinate": _frame(["MAE", "i-MAE", "untrained", "pixels"]),
                                              "dominant": _frame(["MAE", "i-MAE", "untrained", "pixels"])},
                                             ylabel="held-out $R^2$", chance=0.11),
    "differences": lambda: plots.band_panels({"subordinate": _frame(["i-MAE − MAE", "i-MAE − MAE continued"])},
                                             ylabel="difference", zero=True),
    "interval_points": lambda: plots.interval_points(
        _frame(["MAE", "i-MAE", "untrained"], alphas=(0,)).assign(evaluation="probe"), ylabel="%",
        group="evaluation", chance=10.0),
    "ablation_panels": lambda: plots.ablation_panels(
        pd.DataFrame({"variant": ["standard", "a", "b"], "LS": [0.1, 0.2, 0.3], "PSNR": [10.0, 11, 12],
                      "probe": [40.0, 41, 42]}), index="variant"),
    "image_grid": lambda: plots.image_grid({f"row {i}": [np.zeros((8, 8, 3))] * 7 for i in range(3)},
                                           col_titles=[f"col {c}" for c in range(7)]),
    "line_curves": lambda: plots.line_curves({"MAE": ([1, 2], [3, 4])}, xlabel="x", ylabel="y"),
}


@pytest.mark.parametrize("name", FIGURES)
def test_figures_fit_the_column_and_their_text_is_at_least_9_pt(name):
    fig = FIGURES[name]()
    width_px = fig.get_size_inches()[0] * fig.dpi
    assert width_px <= plots.COLUMN_PX + 1, f"{name}: {width_px:.0f} px would be shrunk into the {plots.COLUMN_PX} px column"
    scale = min(1.0, plots.COLUMN_PX / width_px)
    small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig) if t.get_fontsize() * scale < plots.MIN_PT]
    assert not small, f"{name}: text under {plots.MIN_PT} pt on the page: {small[:5]}"


@pytest.mark.parametrize("name", ["band_panels", "differences", "interval_points", "line_curves"])
def test_legends_sit_outside_the_data(name):
    fig = FIGURES[name]()
    assert not any(ax.get_legend() for ax in fig.axes), "a legend inside an axes covers the curves"
    assert fig.legends, "the legend is the figure's, under the panels"
    fig.canvas.draw()
    box = fig.legends[0].get_window_extent()
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), "the figure legend overlaps a panel"


def test_arms_keep_one_style_across_the_book_and_mixture_itself_is_not_the_mae_blue():
    styles = plots.ARM_STYLES
    assert styles["mixture itself"]["color"] != styles["MAE"]["color"]
    colours = [styles[k]["color"] for k in ("MAE", "i-MAE", "MAE continued", "untrained", "pixels",
                                            "i-MAE, no distillation", "mixture itself")]
    assert len(set(colours)) == len(colours)
