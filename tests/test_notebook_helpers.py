"""What the chapters use to put tables, answers and the alpha sweep on the page."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from imae.companion import notebook as nb
from imae.companion import plotdata, plots
from imae.errors import ConfigError


def test_markdown_table_keeps_index_escapes_pipes_and_formats_floats():
    df = pd.DataFrame({"R² [95 % CI]": ["0.12 [0.10, 0.14]", "a|b"], "n": [12345.6, 0.000123456]},
                      index=pd.Index(["MAE", "i-MAE"], name="model"))
    lines = nb.markdown_table(df).splitlines()
    assert lines[0] == "| model | R² [95 % CI] | n |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| MAE | 0.12 [0.10, 0.14] | 12,346 |"
    assert lines[3] == "| i-MAE | a\\|b | 0.0001235 |"
    multi = pd.DataFrame({"x": [1.5]}, index=pd.MultiIndex.from_tuples([("v", "m")], names=["variant", "measure"]))
    assert nb.markdown_table(multi).splitlines()[0] == "| variant | measure | x |"


def test_table_directive_labels_the_glued_table_and_links_its_csv():
    text = nb.table_directive("tbl_semantics_ds", "Accuracy per α", "results/semantics_ds.csv")
    assert text.startswith(":::{table} Accuracy per α ({download}`CSV <results/semantics_ds.csv>`)\n")
    assert ":name: tbl-semantics-ds" in text and "```{glue:md} tbl_semantics_ds\n:format: myst" in text


def _summary(first, last):
    return pd.DataFrame({"first epoch": first, "last epoch": last}, index=["loss", "loss_rec"])


def test_training_answer_names_every_loss_that_did_not_fall():
    falling = {"MAE": [_summary([2, 2], [1, 1])] * 3, "i-MAE": [_summary([3, 3], [2, 2])] * 3}
    assert nb.training_answer(falling).startswith("Yes: every loss term of every run (MAE, i-MAE; 3 training seeds)")
    rising = {"MAE": [_summary([2, 2], [1, 1]), _summary([2, 2], [1, 2.5])]}
    text = nb.training_answer(rising)
    assert text.startswith("Not everywhere") and "MAE seed 1 (loss_rec)" in text and "seed 0" not in text


def test_frame_slider_is_self_contained():
    plt = plots._plt()
    frames = {}
    for k in range(3):
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.imshow(np.full((4, 4), k / 2))
        frames[f"α = {k / 4:.2f}"] = fig
    html = plots.frame_slider(frames, uid="t")
    assert html.count("<img") == 3 and html.count('src="data:image/png;base64,') == 3
    assert 'max="2"' in html and "α = 0.50" in html
    assert not re.search(r"https?://", html)  # nothing is fetched to view it
    assert html.count('display:block') == 1  # without JavaScript, the first frame shows
    with pytest.raises(ValueError):
        plots.frame_slider({})


def test_alpha_sweep_starts_at_the_dominant_image(imae_run, mae_run):
    from imae.companion import experiments

    frames = experiments.reconstruction_sweep(imae_run, alphas=[0.0, 0.25, 0.5], n_examples=2, device="cpu")
    assert list(frames) == [0.0, 0.25, 0.5]
    zero, half = frames[0.0], frames[0.5]
    np.testing.assert_allclose(zero["x_mix"], zero["x_dom"], atol=1e-6)  # alpha = 0: no subordinate at all
    np.testing.assert_allclose(half["x_mix"], 0.5 * (half["x_sub"] + half["x_dom"]), atol=1e-5)
    assert np.array_equal(zero["mask"], half["mask"])  # one mask for every frame
    assert {"mae", "imae_sub", "imae_dom"} <= set(zero) and zero["imae_sub"].shape == zero["x_sub"].shape
    rows, titles = plotdata.reconstruction_rows({"examples": {0.25: frames[0.25]}}, per_alpha=2)
    assert len(rows) == 2 and len(titles) == 7
    with pytest.raises(ConfigError, match=r"\[0, 0.5\]"):
        experiments.reconstruction_sweep(imae_run, alphas=[0.7], device="cpu")
