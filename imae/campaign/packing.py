"""A window's output folder: ``manifest.json``, ``campaign.log`` and one ``<stage>.tar.gz`` per stage.

Each finished (or partly finished) stage's folder is archived as soon as it ends, so a job killed later still
leaves every finished stage behind; the window's entry in the manifest lists every archive with its sha256
(:meth:`Packer.catalog`), which :func:`imae.campaign.collect.collect` checks. An itemized stage that grows
later in the same window is archived again. :class:`Packer` is the window's default
(:attr:`~imae.campaign.state.CampaignConfig.packer`); one that splits archives or enforces limits on what a
transfer can hold may replace it.

:func:`safe_extract` is the other end: it unpacks an archive refusing absolute paths, ``..``, links and
anything but regular files and folders.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from ..errors import ImaeError
from ..pretrained import sha256_file

MANIFEST_NAME, LOG_NAME = "manifest.json", "campaign.log"
COMPILE_ARCHIVE = "compile-cache.tar.gz"  # torch.compile's artefacts for the next window (imae.campaign.compilecache)
RESERVED = (MANIFEST_NAME, LOG_NAME, COMPILE_ARCHIVE)  # a window's files beside its stage archives


class PackingError(ImaeError):
    """A window's output cannot be written or read as it must be."""


def stage_files(src: Path) -> list[Path]:
    """The files of a stage folder that are archived (hidden files are not)."""
    return sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))


class Packer:
    """Archives stage folders into ``out``: ``<stage>.tar.gz`` holding ``<stage>/...``."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.groups: dict[str, list[tuple[str, Path, list[Path]]]] = {}  # archive -> [(stage, folder, files)]

    def archives_of(self, stage: str) -> list[str]:
        return [a for a, members in self.groups.items() if any(s == stage for s, _, _ in members)]

    def drop(self, stage: str) -> None:
        """Forget (and delete or rewrite) what an earlier :meth:`pack` of ``stage`` wrote."""
        for name in self.archives_of(stage):
            self.groups[name] = [m for m in self.groups[name] if m[0] != stage]
            if not self.groups[name]:
                del self.groups[name]
                (self.out / name).unlink(missing_ok=True)
            else:
                self.write(name)

    def pack(self, stage: str, src: str | os.PathLike) -> list[str]:
        """(Re)write the archive of ``stage`` (its folder ``src`` as ``<stage>/...``); returns its name(s)."""
        src = Path(src)
        self.drop(stage)
        name = f"{stage}.tar.gz"
        self.groups[name] = [(stage, src, stage_files(src))]
        self.write(name)
        return [name]

    def write(self, name: str) -> None:
        """Write archive ``name`` from its members (atomically: a temporary file renamed over it)."""
        path = self.out / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        members = []
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for stage, src, files in self.groups[name]:
                for p in files:
                    arc = f"{stage}/{p.relative_to(src).as_posix()}"
                    tar.add(p, arcname=arc, recursive=False)
                    members.append((arc, p.stat().st_size))
        try:
            self.check_archive(name, tmp.stat().st_size, members)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)

    def check_archive(self, name: str, size: int, members: list[tuple[str, int]]) -> None:
        """Called before an archive replaces the old one (``members``: [(name, bytes)]); raise to refuse it."""

    def catalog(self) -> dict:
        """{archive: {sha256, bytes, stages}} of every archive written so far."""
        return {a: {"sha256": sha256_file(self.out / a), "bytes": (self.out / a).stat().st_size,
                    "stages": sorted({s for s, _, _ in members})} for a, members in sorted(self.groups.items())}

    def check(self) -> list[tuple[str, int]]:
        """The files of the output folder, [(name, bytes)], once the window is done."""
        return output_files(self.out)


def output_files(out: str | os.PathLike) -> list[tuple[str, int]]:
    """[(relative name, bytes)] of every file under ``out``."""
    out = Path(out)
    return [(p.relative_to(out).as_posix(), p.stat().st_size) for p in sorted(out.rglob("*")) if p.is_file()]


def clear_previous_output(out: str | os.PathLike) -> list[str]:
    """Make ``out`` ready: create it, or empty it when it holds only a previous campaign's output
    (``campaign.log`` + ``manifest.json`` + ``*.tar.gz``); refuse a folder holding anything else."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = sorted(out.iterdir())
    if not entries:
        return []
    ours = [p for p in entries if p.is_file() and (p.name in RESERVED or p.name.endswith(".tar.gz"))]
    if len(ours) != len(entries) or not (out / LOG_NAME).is_file():
        others = [p.name for p in entries if p not in ours]
        raise PackingError(f"the output folder {out} holds files that are not a previous campaign's output "
                           f"({others or [p.name for p in entries]}); a window writes only its own results there. "
                           "Fix: choose an empty folder for --out")
    for p in ours:
        p.unlink()
    return [p.name for p in ours]


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Unpack ``archive`` into ``dest``; only regular files and folders with relative, ``..``-free names."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            parts = Path(m.name).parts
            if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
                raise PackingError(f"{archive}: refusing member {m.name!r} (absolute, '..', link or device)")
        for m in members:
            if m.isdir():
                (dest / m.name).mkdir(parents=True, exist_ok=True)
                continue
            target = dest / m.name
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                while True:
                    block = src.read(1 << 20)
                    if not block:
                        break
                    f.write(block)
            os.replace(tmp, target)
            names.append(m.name)
    return names


__all__ = ["LOG_NAME", "MANIFEST_NAME", "RESERVED", "Packer", "PackingError", "clear_previous_output", "output_files",
           "safe_extract", "stage_files"]
