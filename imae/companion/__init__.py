"""The companion: what turns trained runs and stored results into the Jupyter Book's chapters.

The notebooks in ``experiments/`` import from here (``from imae.companion.chapter import cmp, ex, nb, ...``) and
``python -m imae reproduce`` (:mod:`.reproduce`) runs them into ``book/``. What it holds:

* runs and evaluations for the notebooks, cached (:mod:`.experiments`);
* statistics: intervals and paired differences (:mod:`.stats`), and the verdict rule (:mod:`.verdict`);
* comparisons over training seeds with their controls (:mod:`.comparison`), each claim's verdict
  (:mod:`.findings`) and the paper-scale campaign as the book tells it (:mod:`.summaries`);
* figures (:mod:`.plotdata` shapes, :mod:`.plots` draws) and the page (:mod:`.notebook`, :mod:`.chapter`).

It sits above the engine, the measurements and the campaign, which import nothing from it.
"""
