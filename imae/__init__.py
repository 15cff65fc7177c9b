"""imae: MAE and i-MAE (Zhang & Shen, arXiv 2210.11470) — models, data, training, metrics, plots."""

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
