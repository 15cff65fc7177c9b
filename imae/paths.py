"""Where the repository lies: the one definition every module that reads its folders uses."""

from __future__ import annotations

from pathlib import Path


def repo_root() -> Path:
    """The folder holding the ``imae`` package (a checkout's root; ``campaign/``, ``book/``, ``experiments/``)."""
    return Path(__file__).resolve().parents[1]


__all__ = ["repo_root"]
