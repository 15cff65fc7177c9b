"""torch.compile's artefacts, carried from one window to the next, so a later window starts without compiling.

A window that compiles (``train.compile``) leaves inductor's and AOTAutograd's artefacts behind in its process;
:func:`save` serialises them (``torch.compiler.save_cache_artifacts``) into ``<out>/compile-cache.tar.gz``,
recorded in the window's manifest entry, and ``--collect`` puts the file into ``campaign/<preset>/compile_cache/``
(:func:`collect`). The next window, before its smoke steps, hot-loads every carried file made for the same torch
version and the same device (:func:`load`, ``torch.compiler.load_cache_artifacts``): inductor then finds its
compiled graphs in its cache instead of compiling them. Files made with another torch or on another device
(an H100 and an H200 are both ``sm_90``, so they share theirs) are left alone, and the log says so in one line.

Nothing here is needed for correctness: without carried artefacts, or when loading them fails, the window
compiles as before (and says so).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

from .packing import COMPILE_ARCHIVE

FOLDER = "compile_cache"  # beside the manifest: campaign/<preset>/compile_cache/<key>-<sha>.bin
ARCHIVE = COMPILE_ARCHIVE  # in a window's output folder (a file slot the packers keep free for it)
MAX_BYTES = 12 * 2**20  # a window's output files must each stay well under what a transfer brings back


def device_key(device) -> str:
    """``torch<version>-<device>``: ``sm_90`` for a CUDA device of compute capability 9.0, ``cpu-x86_64`` on
    a CPU. Artefacts are loaded only where this key is the one they were saved under."""
    import platform

    import torch

    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        where = f"sm_{major}{minor}"
    else:
        where = f"{device.type}-{platform.machine() or 'unknown'}"
    return f"torch{torch.__version__.split('+')[0]}-{where}"


def _key_of(path: Path) -> str:
    return path.name[:-len(".bin")].rsplit("-", 1)[0]


def load(folder: str | os.PathLike, device, log=print) -> dict:
    """Hot-load the carried artefacts in ``folder`` that match this torch and device; returns the record
    ({"key", "loaded": [file names], "bytes", "load_s", "other": [files left alone], "note"})."""
    import torch

    folder, key = Path(folder), device_key(device)
    files = sorted(folder.glob("*.bin")) if folder.is_dir() else []
    mine = [p for p in files if _key_of(p) == key]
    other = sorted({_key_of(p) for p in files if _key_of(p) != key})
    rec = {"key": key, "loaded": [], "bytes": 0, "load_s": 0.0, "other": other}
    if not mine:
        rec["note"] = (f"compile artefacts carried for {other}, none for this machine ({key}): compiling afresh"
                       if other else f"no compile artefacts carried for {key}: compiling afresh")
        log(rec["note"])
        return rec
    t0 = time.monotonic()
    for p in mine:
        try:
            info = torch.compiler.load_cache_artifacts(p.read_bytes())
            why = None if info is not None else "torch could not read it"
        except Exception as e:  # noqa: BLE001 - a damaged or incompatible file costs a compile, never the window
            why = f"{type(e).__name__}: {str(e)[:200]}"
        if why:
            log(f"compile artefacts {p.name} not loaded ({why}): compiling afresh")
            continue
        rec["loaded"].append(p.name)
        rec["bytes"] += p.stat().st_size
    rec["load_s"] = round(time.monotonic() - t0, 2)
    if not rec["loaded"]:
        rec["note"] = f"none of the carried compile artefacts for {key} could be loaded: compiling afresh"
        return rec
    rec["note"] = (f"loaded compile artefacts {rec['loaded']} ({rec['bytes'] / 2**20:.1f} MiB, {key}) in "
                   f"{rec['load_s']} s: torch.compile reuses what earlier windows compiled")
    log(rec["note"])
    return rec


def save(out: str | os.PathLike, device, log=print, *, max_bytes: int = MAX_BYTES) -> dict | None:
    """Write what this process compiled (or loaded) as ``<out>/compile-cache.tar.gz`` holding
    ``<key>-<sha12>.bin``; returns {"file", "member", "sha256", "bytes", "artefacts"} or None when nothing was
    compiled (or it is larger than ``max_bytes``, logged)."""
    import torch

    from ..pretrained import sha256_file

    saved = torch.compiler.save_cache_artifacts()
    if saved is None or not saved[0]:
        return None
    data, info = saved
    counts = {k: len(v) for k, v in getattr(info, "artifacts", {}).items()}
    if len(data) > max_bytes:
        log(f"compile artefacts ({len(data) / 2**20:.1f} MiB) exceed {max_bytes / 2**20:.0f} MiB: not carried")
        return None
    member = f"{device_key(device)}-{hashlib.sha256(data).hexdigest()[:12]}.bin"
    out = Path(out)
    path, tmp = out / ARCHIVE, out / f".{ARCHIVE}.{os.getpid()}.tmp"
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        ti = tarfile.TarInfo(f"{FOLDER}/{member}")
        ti.size, ti.mtime = len(data), 0
        tar.addfile(ti, io.BytesIO(data))
    os.replace(tmp, path)
    rec = {"file": ARCHIVE, "member": member, "sha256": sha256_file(path), "bytes": path.stat().st_size,
           "artefacts": counts}
    log(f"compile artefacts saved: {member} ({len(data) / 2**20:.1f} MiB, {counts}) -> {ARCHIVE}")
    return rec


def collect(src: Path, rec: dict | None, dest: Path, log=print) -> list[str]:
    """Put a window's carried artefacts (its manifest entry's ``compile_cache``: ``saved``, ``loaded``) into
    ``dest/compile_cache``, checked against the recorded sha256, replacing the files that window loaded (its save
    holds them); returns the files placed."""
    import tempfile

    from ..pretrained import sha256_file
    from .manifest import CampaignError
    from .packing import safe_extract

    saved = (rec or {}).get("saved")
    if not saved:
        return []
    path = src / saved["file"]
    if not path.is_file():
        log(f"warning: {saved['file']} is missing; the next window compiles afresh")
        return []
    if sha256_file(path) != saved["sha256"]:
        raise CampaignError(f"{path} does not match the sha256 the manifest records: the transfer is damaged; "
                            "fetch the files again")
    placed = []
    with tempfile.TemporaryDirectory() as tmp:
        safe_extract(path, tmp)
        for p in sorted((Path(tmp) / FOLDER).glob("*.bin")):
            (dest / FOLDER).mkdir(parents=True, exist_ok=True)
            (dest / FOLDER / p.name).write_bytes(p.read_bytes())
            placed.append(p.name)
    # what the window saved holds what it loaded (torch records hot-loaded artefacts too): one file per key
    for old in rec.get("loaded", []):
        if old not in placed:
            (dest / FOLDER / old).unlink(missing_ok=True)
    if placed:
        log(f"compile artefacts {placed} -> {dest / FOLDER} (the next window on {_key_of(dest / FOLDER / placed[0])} "
            f"loads them)")
    return placed


__all__ = ["ARCHIVE", "FOLDER", "collect", "device_key", "load", "save"]
