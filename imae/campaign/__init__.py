"""The GPU campaign: paper-scale training in short GPU windows, budgeted, staged and resumable.

``python -m imae campaign --preset cifar --budget-s 500 --out DIR`` runs one window (:mod:`.runner`);
``python -m imae campaign --collect DIR`` brings its returned files into the repository
(:func:`imae.campaign.collect.collect`).
See campaign/README.md for the exact commands of a GPU window.

Nothing heavy is imported here (the CLI's parser must work without torch); names resolve on first use.
"""

_LAZY = {
    "CampaignConfig": "runner", "Campaign": "runner", "run_campaign": "runner",
    "Manifest": "manifest", "CampaignError": "manifest", "MANIFEST_FORMAT": "manifest",
    "Packer": "packing", "PackingError": "packing", "MAX_FILES": "packing", "MAX_BYTES": "packing",
    "Clock": "watchdog", "Watchdog": "watchdog", "DeadlineReached": "watchdog",
    "default_stages": "stages",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
