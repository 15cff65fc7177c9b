"""Bring a window's output into the repository: ``python -m imae campaign --collect FOLDER``.

``FOLDER`` is the window's ``--out`` folder, or a copy of it (``manifest.json``, ``campaign.log``, the stage
archives). For every stage the returned manifest records an archive of, the archive's sha256 is
checked against the manifest, it is unpacked safely, and its files land in ``campaign/<preset>/``:

* ``weights/<name>.safetensors`` + ``.json`` of the committed models (the teacher and the standard i-MAE),
  each checked against its card's sha256;
* ``results/<stage>/...`` everything else (config, metrics.jsonl, evaluation JSON, throughput table);
* ``logs/window-<id>.log`` the window's log;
* ``compile_cache/<key>-<sha>.bin`` torch.compile's artefacts for the next window on the same torch and device
  (:mod:`~imae.campaign.compilecache`).

Finally the returned manifest is merged into the repository's (:func:`~imae.campaign.manifest.merge`). A
stage whose archive is missing is left as the repository had it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..paths import repo_root
from ..pretrained import sha256_file, verify
from ..runs import atomic_write_npz, atomic_write_text
from . import compilecache
from .manifest import CampaignError, Manifest, check, merge
from .packing import LOG_NAME, MANIFEST_NAME, safe_extract


def collect(src: str | os.PathLike, dest: str | os.PathLike | None = None, *, log=print) -> dict:
    """Import the files of one window from ``src`` into ``dest`` (default ``<repo>/campaign/<preset>``).

    Returns {"stages": [collected stage names], "missing": [stages whose archive is absent], "dest": path}.
    """
    src = Path(src)
    mpath = src / MANIFEST_NAME
    if not mpath.is_file():
        raise CampaignError(f"{src} holds no {MANIFEST_NAME}: pass the window's output folder (its --out)")
    try:
        returned = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise CampaignError(f"{mpath} is not valid JSON ({e})") from e
    preset = returned.get("preset")
    check(returned, mpath, preset)
    dest = Path(dest) if dest else repo_root() / "campaign" / preset
    local = Manifest.load(dest / MANIFEST_NAME, preset)
    # The archives of this window (the last one of the returned manifest) and their checksums.
    archives: dict[str, dict] = (returned["windows"][-1].get("files") or {}) if returned["windows"] else {}
    collected, missing = [], []
    stage_names = set()
    for file, info in sorted(archives.items()):
        path = src / file
        if not path.is_file():
            missing.extend(info.get("stages", []))
            log(f"warning: {file} is missing; stages {info.get('stages')} stay as the repository has them")
            continue
        digest = sha256_file(path)
        if digest != info["sha256"]:
            raise CampaignError(f"{path} has sha256 {digest[:16]}..., the manifest records {info['sha256'][:16]}...: "
                                "the transfer is damaged; fetch the files again")
        with tempfile.TemporaryDirectory() as tmp:
            safe_extract(path, tmp)
            for stage_dir in sorted(Path(tmp).iterdir()):
                stage = stage_dir.name
                if stage not in returned["stages"]:
                    raise CampaignError(f"{file} holds a folder {stage!r} the manifest does not know")
                _place(stage_dir, dest, returned["stages"][stage])
                stage_names.add(stage)
                collected.append(stage)
    # A stage is merged when its files are there (or it has none to bring); otherwise the local entry stays.
    keep = dict(returned)
    this_window = {s for info in archives.values() for s in info.get("stages", [])}
    keep["stages"] = {n: r for n, r in returned["stages"].items() if n in stage_names or n not in this_window}
    merged = merge(local.data, keep)
    if (src / LOG_NAME).is_file():
        # The window's id as merged: two windows begun from the same manifest both call themselves N, and the
        # merge renumbers the later one, so the log is named after the merged id, not the returned one.
        last = returned["windows"][-1] if returned.get("windows") else {}
        wid = next((w.get("id") for w in merged["windows"] if w.get("started_at") == last.get("started_at")),
                   last.get("id", 0))
        (dest / "logs").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / LOG_NAME, dest / "logs" / f"window-{wid}.log")  # the source may be read-only
    dest.mkdir(parents=True, exist_ok=True)
    if returned.get("windows"):  # torch.compile's artefacts, for the next window (imae.campaign.compilecache)
        compilecache.collect(src, returned["windows"][-1].get("compile_cache"), dest, log=log)
    atomic_write_text(dest / MANIFEST_NAME, json.dumps(merged, indent=1) + "\n")
    log(f"collected {sorted(set(collected))} into {dest}" + (f"; missing {missing}" if missing else ""))
    return {"stages": sorted(set(collected)), "missing": missing, "dest": str(dest)}


F16_MAX = 60_000.0  # below float16's largest finite value (65,504), with room for rounding
# Per-item arrays no metric reads (imae.companion.comparison): the separability JSON keeps their means.
UNREAD_ITEMS = ("/centred_cosine",)
# Per-item arrays of the class-token feature: the book reads the mean-pooled one (``pool = "mean"``); the
# class token's summaries stay in each evaluation's JSON. Dropped to keep the repository small.
UNCOMMITTED_POOLS = ("cls/",)


def compact_items(path: str | os.PathLike, *, display: bool = False) -> dict:
    """Store an evaluation's per-item arrays compactly for committing: float32 arrays become float16 where every
    value fits (finite, |x| < 60,000, and no nonzero |x| under float16's smallest normal, 6.1e-5); the others
    stay float32, and integer arrays stay as they are. float16 keeps 11 significant
    bits (relative rounding <= 4.9e-4 per item), which moves a bootstrap interval over thousands of items by
    about 1e-5: far below its width. Arrays no metric reads (``UNREAD_ITEMS``) are dropped, and so are the
    class-token pool's (``UNCOMMITTED_POOLS``): the book reads the mean-pooled feature. ``display``
    (example images, ``*_examples.npz``, which only figures show): float16 wherever the values are finite and
    in range, tiny values included (an absolute error under 1e-7 of a pixel in [0, 1]). The arrays load back as
    float32 (:func:`imae.companion.experiments.cached_evaluation`).

    Returns {"before": bytes, "after": bytes, "kept_float32": [names]}. The file is replaced atomically."""
    import numpy as np

    path = Path(path)
    before = path.stat().st_size
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    out, kept = {}, []
    for k, a in arrays.items():
        if k.endswith(UNREAD_ITEMS) or (not display and k.startswith(UNCOMMITTED_POOLS)):
            continue
        if a.dtype == np.float32:
            nz = np.abs(a[a != 0])
            ok = bool(np.isfinite(a).all()) and (nz.size == 0 or (nz.max() < F16_MAX and (display or nz.min() >= 6.11e-5)))
            out[k] = a.astype(np.float16) if ok else a
            if not ok:
                kept.append(k)
        else:
            out[k] = a
    atomic_write_npz(path, out)
    return {"before": before, "after": path.stat().st_size, "kept_float32": kept}


def _place(stage_dir: Path, dest: Path, rec: dict) -> None:
    """Move one stage's files into the repository layout and check them against the manifest."""
    files = rec.get("files", {})
    for p in sorted(stage_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(stage_dir).as_posix()
        target = dest / rel if rel.startswith("weights/") else dest / "results" / stage_dir.name / rel
        if rel in files and sha256_file(p) != files[rel]["sha256"]:
            raise CampaignError(f"{stage_dir.name}/{rel} does not match the manifest's sha256")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
        if target.name.endswith("_items.npz"):
            compact_items(target)
        elif target.name.endswith("_examples.npz"):
            compact_items(target, display=True)
    for card in sorted((dest / "weights").glob("*.json")) if (stage_dir / "weights").is_dir() else []:
        if (stage_dir / "weights" / card.name).is_file():
            verify(card)


__all__ = ["collect", "compact_items"]
