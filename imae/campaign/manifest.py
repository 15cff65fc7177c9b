"""The campaign's manifest: which stages are done, with their results, across GPU windows.

One JSON file per preset, committed in the repository (``campaign/<preset>/manifest.json``)::

    {
      "format": "imae-campaign-v1", "preset": "cifar", "updated": "...",
      "fixed": {"mae": {"epochs": 60, "warmup_epochs": 3.0}, "imae": {...}},   # schedules later stages reuse
      "windows": [{"id": 1, "device": "1x NVIDIA H100 ...", "budget_s": 500, "versions": {...},
                   "measured": {"img_per_s": {"mae": ..., "imae": ...}, ...}, "outcome": "ok", "wall_s": ...,
                   "stages": {"mae": "done", "imae": "done", "eval": "partial: 9/15 evaluations"},
                   "files": {"mae.tar.gz": {"sha256": ..., "bytes": ..., "stages": ["mae"]}, ...}}],
      "stages": {
        "mae": {"status": "done", "window": 1, "attempts": 1, "inputs": {},
                "plan": {"train": {"mae": {"epochs": 60, "warmup_epochs": 3.0, "rate_img_s": ..., "why": ...}},
                         "estimate_s": ..., "left_s": ...},
                "result": {"epochs": 60, "train_s": ..., "img_per_s": ..., "final_loss": ..., "device": ...,
                           "weights_sha256": ..., ...},
                "files": {"weights/cifar-mae.safetensors": {"sha256": ..., "bytes": ...}, ...},
                "archives": ["mae.tar.gz"]},
        "eval": {"status": "started", "items": {"mae/knn": {"wall_s": 4.2, "summary": {...}, ...}, ...}, ...}
      }
    }

``inputs`` records the weights (sha256) of the stages a stage was computed from: a done stage whose inputs
changed (its teacher was retrained) runs again.

A stage's status is ``done``, ``started`` (begun, not finished: interrupted by the deadline, or the window
ended; the next window redoes it, or resumes it where its work folder survived) or ``failed`` (with the
error; retried next window). Every write is atomic (a temporary file renamed over the old one), so a kill at
any moment leaves the previous or the new manifest, never half of one; and one process at a time writes a
manifest (:func:`manifest_lock`, taken by ``python -m imae campaign`` for a window and for ``--collect``), so two
windows on one manifest never drop each other's records.
"""

from __future__ import annotations

import copy
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ImaeError
from ..runs import FolderLock, atomic_write_text

MANIFEST_FORMAT = "imae-campaign-v1"
STATUSES = ("started", "done", "failed")


class CampaignError(ImaeError):
    """A campaign cannot start or go on (preflight, smoke steps, manifest, missing inputs)."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """The manifest's data (``.data``) and where it is written (``.path`` plus ``copies``)."""

    def __init__(self, path: str | os.PathLike | None, data: dict, copies: tuple = ()):
        self.path = Path(path) if path is not None else None
        self.data = data
        self.copies = [Path(c) for c in copies]

    # ----------------------------------------------------------------------------------------- files
    @classmethod
    def new(cls, preset: str, path=None) -> "Manifest":
        return cls(path, {"format": MANIFEST_FORMAT, "preset": preset, "updated": now_iso(), "fixed": {},
                          "windows": [], "stages": {}})

    @classmethod
    def load(cls, path: str | os.PathLike, preset: str) -> "Manifest":
        """Read ``path`` (a new manifest when absent); a torn or foreign file is a CampaignError."""
        path = Path(path)
        if not path.exists():
            return cls.new(preset, path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CampaignError(
                f"the campaign manifest {path} is unreadable ({type(e).__name__}: {e}). Fix: restore it from the "
                f"repository (git checkout -- {path}) or from the manifest.json a GPU run returned") from e
        check(data, path, preset)
        return cls(path, data)

    def save(self) -> None:
        self.data["updated"] = now_iso()
        text = json.dumps(self.data, indent=1, sort_keys=False) + "\n"
        for p in ([self.path] if self.path else []) + self.copies:
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(p, text)

    # ---------------------------------------------------------------------------------------- stages
    @property
    def stages(self) -> dict:
        return self.data["stages"]

    def stage(self, name: str) -> dict:
        return self.stages.get(name, {})

    def status(self, name: str) -> str:
        return self.stage(name).get("status", "pending")

    def is_done(self, name: str) -> bool:
        return self.status(name) == "done"

    def start(self, name: str, *, window: int, plan: dict, inputs: dict) -> dict:
        """Mark ``name`` started with its plan; keeps what a previous attempt recorded (items, attempts)."""
        rec = self.stages.setdefault(name, {})
        same_plan = rec.get("status") == "started" and (rec.get("plan") or {}).get("train") == plan.get("train")
        rec.update({"status": "started", "window": window, "started_at": now_iso(), "plan": plan,
                    "inputs": inputs, "attempts": rec.get("attempts", 0) + (0 if same_plan else 1)})
        rec.pop("error", None)
        return rec

    def finish(self, name: str, **fields) -> dict:
        rec = self.stages.setdefault(name, {})
        rec.update(fields)
        rec.update({"status": "done", "finished_at": now_iso()})
        rec.pop("error", None)
        return rec

    def fail(self, name: str, error: str) -> dict:
        rec = self.stages.setdefault(name, {})
        rec.update({"status": "failed", "error": error, "failed_at": now_iso()})
        return rec

    # --------------------------------------------------------------------------------------- windows
    def new_window(self, **fields) -> dict:
        wid = max((w.get("id", 0) for w in self.data["windows"]), default=0) + 1
        window = {"id": wid, "started_at": now_iso(), **fields, "stages": {}}
        self.data["windows"].append(window)
        return window


def manifest_lock(path: str | os.PathLike, doing: str = "running a campaign window on") -> FolderLock:
    """The exclusive lock of the manifest ``path`` (``.<name>.lock`` beside it), for a ``with`` block: a second
    window (or ``--collect``) on the same manifest gets a RunLockedError naming the first, before it reads it."""
    path = Path(path)
    return FolderLock(path.with_name(f".{path.name}.lock"), doing=doing, target=path)


def check(data: dict, path, preset: str) -> None:
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CampaignError(f"{path} is not a campaign manifest (format {found!r}, expected {MANIFEST_FORMAT!r})")
    if data.get("preset") != preset:
        raise CampaignError(f"{path} is the manifest of preset {data.get('preset')!r}, not {preset!r}. Fix: pass "
                            f"--manifest campaign/{preset}/manifest.json (or another path)")
    for key, default in (("fixed", {}), ("windows", []), ("stages", {})):
        data.setdefault(key, copy.deepcopy(default))
    for name, rec in data["stages"].items():
        if rec.get("status") not in STATUSES:
            raise CampaignError(f"{path}: stage {name!r} has status {rec.get('status')!r}; expected one of "
                                f"{list(STATUSES)}. Fix: correct or delete that entry (the stage then runs again)")


def merge(local: dict, returned: dict) -> dict:
    """The repository's manifest updated by one a GPU run returned (which began from a copy of it, or of an
    older one): windows are united by (id, started_at); a stage takes the returned entry unless the local
    one is done and the returned one is not."""
    out = copy.deepcopy(local)
    seen = {(w.get("id"), w.get("started_at")) for w in out["windows"]}
    for w in returned.get("windows", []):
        if (w.get("id"), w.get("started_at")) not in seen:
            if any(x.get("id") == w.get("id") for x in out["windows"]):
                w = {**w, "id": max(x.get("id", 0) for x in out["windows"]) + 1}
            out["windows"].append(copy.deepcopy(w))
    for name, rec in returned.get("stages", {}).items():
        mine = out["stages"].get(name)
        if mine is None or not (mine.get("status") == "done" and rec.get("status") != "done"):
            out["stages"][name] = copy.deepcopy(rec)
    for key, value in returned.get("fixed", {}).items():
        out["fixed"].setdefault(key, copy.deepcopy(value))
    out["updated"] = now_iso()
    return out
