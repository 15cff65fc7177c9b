"""The names a chapter notebook works with, so its first cell is one import line and one setup call::

    from imae.companion.chapter import cmp, ex, nb, pd, plots, stats
    P = nb.setup(globals())

Each notebook imports the names it uses. What each one is:

* ``ex`` (:mod:`imae.companion.experiments`): trained runs and their evaluations, cached; provenance records;
* ``cmp`` (:mod:`imae.companion.comparison`): the models over training seeds with their controls, and the metric
  selectors, estimates and paired differences every chapter reports;
* ``stats`` (:mod:`imae.companion.stats`): intervals, differences and the sentences that judge them;
* ``plotdata`` (:mod:`imae.companion.plotdata`) and ``plots`` (:mod:`imae.companion.plots`): results shaped for
  figures, and the figures;
* ``nb`` (:mod:`imae.companion.notebook`): the setup call and what puts numbers, sentences, figures and tables on
  the page;
* ``findings`` (:mod:`imae.companion.findings`): the verdict on each of the paper's claims;
* ``pd``: pandas, for the chapters' tables.
"""

from __future__ import annotations

import pandas as pd

from . import comparison as cmp
from . import experiments as ex
from . import findings, plotdata, plots, stats
from . import notebook as nb

__all__ = ["cmp", "ex", "findings", "nb", "pd", "plotdata", "plots", "stats"]
