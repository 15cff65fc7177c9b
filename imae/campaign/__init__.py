"""The campaign: paper-scale training in time-limited windows (a GPU job under a scheduler's wall-clock
limit, a preemptible instance), budgeted, staged and resumable.

``python -m imae campaign --preset cifar --budget-s 3300 --out DIR`` runs one window
(:func:`~imae.campaign.runner.run_campaign`); ``python -m imae campaign --collect DIR`` brings its output into
the repository (:func:`imae.campaign.collect.collect`). See campaign/README.md.

A window's state is one :class:`~imae.campaign.state.Window`, passed to plain functions: preflight
(:mod:`.preflight`), smoke steps and measurements (:mod:`.measure`), planning (:mod:`.planner`), running and
packing a stage (:mod:`.steps`, :mod:`.packing`); the stages themselves are :mod:`.stages`, what is done is
:mod:`.manifest`, the deadline :mod:`.watchdog`, and the stored results :mod:`.results`.

Nothing heavy is imported here (the CLI's parser must work without torch); names resolve on first use.
"""

_LAZY = {
    "CampaignConfig": "state", "Window": "state", "run_campaign": "runner",
    "Manifest": "manifest", "CampaignError": "manifest", "MANIFEST_FORMAT": "manifest",
    "Packer": "packing", "PackingError": "packing",
    "Clock": "watchdog", "Watchdog": "watchdog", "DeadlineReached": "watchdog",
    "default_stages": "stages",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
