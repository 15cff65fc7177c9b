"""A short hash of the code that produces evaluation numbers, so cached results go stale when it changes.

:func:`code_version` hashes the source of ``imae/metrics/*.py``, ``imae/data/*.py`` and
``imae/models/*.py`` (file names relative to the ``imae`` package, and their bytes). The experiment cache
(:func:`imae.companion.experiments.cached_evaluation`) puts it in its key and every evaluation records it in its metadata, so
a fix to a metric, to the data pipeline or to the model re-runs the evaluations instead of serving numbers
the old code computed. It is computed afresh at every call (a few dozen small files), so a long-lived
notebook kernel sees edits too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
CODE_DIRS = ("metrics", "data", "models")


def code_files() -> list[Path]:
    """The hashed source files, sorted."""
    return sorted(p for d in CODE_DIRS for p in (PACKAGE / d).glob("*.py"))


def code_version(files=None) -> str:
    """12 hex digits of SHA-1 over (name, size, bytes) of ``files`` (default :func:`code_files`)."""
    h = hashlib.sha1()
    for p in sorted(Path(f) for f in (code_files() if files is None else files)):
        data = p.read_bytes()
        try:
            name = p.resolve().relative_to(PACKAGE).as_posix()
        except ValueError:
            name = p.name
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:12]
