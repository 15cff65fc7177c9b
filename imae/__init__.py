"""imae: MAE and i-MAE (Zhang & Shen, arXiv 2210.11470) — models, data, training, metrics, and the book.

The folders are the layers, bottom up; a module imports its own layer or one below it, never one above
(``tests/test_structure.py`` checks it):

* the engine (the modules at this root) and the measurements beside it: configuration and its presets
  (:mod:`.config`), the experiment design, run folders, checkpoints, the training loop (:mod:`.train`), the
  evaluation registry (:mod:`.evaluations`), devices, stored and shipped weights (:mod:`.pretrained`,
  :mod:`.shipped`); the networks, the images and their mixtures, and every metric (:mod:`imae.models`,
  :mod:`imae.data`, :mod:`imae.metrics`, whose source is hashed into the evaluation cache's key);
* the campaign (:mod:`imae.campaign`): paper-scale training and evaluation in time-limited GPU windows;
* the companion (:mod:`imae.companion`): what turns stored results into the book — cached runs for the
  notebooks, statistics and the verdict rule, comparisons, findings, figures, ``reproduce``;
* the edge, also at this root: the command line (:mod:`.cli`, :mod:`.evaluate_cli`), the timm export
  (:mod:`.export`) and the model cards it writes (:mod:`.cards`, which quote the book's measurements).
"""

from .config import PRESETS, RunConfig, build_config
from .errors import ImaeError

__version__ = "0.1.0"


def pretrain(cfg, out, **kwargs):
    """Train ``cfg`` into the run directory ``out``; see :func:`imae.train.pretrain`."""
    from .train import pretrain as _pretrain

    return _pretrain(cfg, out, **kwargs)


def load_pretrained(name, **kwargs):
    """A stored model by name (``cifar-mae``, ``cifar-imae``), checksum-verified, in eval mode; see
    :func:`imae.pretrained.load_pretrained`."""
    from .pretrained import load_pretrained as _load_pretrained

    return _load_pretrained(name, **kwargs)


__all__ = ["PRESETS", "RunConfig", "build_config", "ImaeError", "pretrain", "load_pretrained", "__version__"]
