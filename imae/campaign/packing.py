"""What comes back from the GPU machine: at most 8 files of at most 16 MiB in the output folder.

The output folder holds ``manifest.json``, ``campaign.log`` and one ``<stage>.tar.gz`` per finished (or
partly finished) stage, or ``<stage>.partN.tar.gz`` parts when a stage is larger than one file may be. When the
stages outnumber the free file slots, a stage joins the archive with the most room (the archive is rebuilt
from the stage folders, which stay on disk). The window's entry in the manifest lists every archive with its
sha256 (:meth:`Packer.catalog`). Any archive over the size limit,
or an output folder over the file limit, is a :class:`PackingError` naming the offenders: nothing is left
for the transfer to drop silently.

:func:`safe_extract` is the other end: it unpacks an archive refusing absolute paths, ``..``, links and
anything but regular files and folders.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from ..errors import ImaeError
from ..pretrained import sha256_file

MAX_FILES = 8
MAX_BYTES = 16 * 2**20
MANIFEST_NAME, LOG_NAME = "manifest.json", "campaign.log"
RESERVED = (MANIFEST_NAME, LOG_NAME)


class PackingError(ImaeError):
    """The results do not fit what can come back from the GPU machine."""


def _files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))


class Packer:
    """Archives stage folders into ``out``; see the module docstring."""

    def __init__(self, out: str | os.PathLike, *, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES,
                 reserved: tuple[str, ...] = RESERVED):
        self.out = Path(out)
        self.max_files, self.max_bytes, self.reserved = max_files, max_bytes, reserved
        self.groups: dict[str, list[tuple[str, Path, list[Path]]]] = {}  # archive -> [(stage, folder, files)]
        if max_files <= len(reserved):
            raise PackingError(f"max_files={max_files} leaves no room beside {list(reserved)}")

    def archives_of(self, stage: str) -> list[str]:
        return [a for a, members in self.groups.items() if any(s == stage for s, _, _ in members)]

    def _chunks(self, stage: str, files: list[Path]) -> list[list[Path]]:
        """Files in groups of at most ~the size limit (gzip does not grow fp16 weights by more than a few
        bytes per block, so 97 % of the limit leaves room); a single file over the limit is an error."""
        limit = int(self.max_bytes * 0.97)
        big = [p for p in files if p.stat().st_size > limit]
        if big:
            raise PackingError(f"stage {stage}: {[f'{p.name} ({p.stat().st_size / 2**20:.2f} MiB)' for p in big]} "
                               f"alone exceed(s) the {self.max_bytes / 2**20:.0f} MiB a returned file may have")
        chunks: list[list[Path]] = [[]]
        size = 0
        for p in files:
            n = p.stat().st_size
            if chunks[-1] and size + n > limit:
                chunks.append([])
                size = 0
            chunks[-1].append(p)
            size += n
        return chunks

    def pack(self, stage: str, src: str | os.PathLike) -> list[str]:
        """(Re)write the archive(s) of ``stage`` (its folder ``src`` as ``<stage>/...``): one file, or
        ``<stage>.partN.tar.gz`` parts when it exceeds the size limit; returns the archive names."""
        src = Path(src)
        for name in self.archives_of(stage):  # repacking (a partial stage grew): drop its old content
            self.groups[name] = [m for m in self.groups[name] if m[0] != stage]
            if not self.groups[name]:
                del self.groups[name]
                (self.out / name).unlink(missing_ok=True)
            else:
                self._write(name)
        chunks = self._chunks(stage, _files(src))
        names = []
        for k, chunk in enumerate(chunks):
            free = self.max_files - len(self.reserved) - len(self.groups)
            if free > 0:
                name = f"{stage}.tar.gz" if len(chunks) == 1 else f"{stage}.part{k + 1}.tar.gz"
                self.groups[name] = [(stage, src, chunk)]
            else:  # no free slot: join the archive with the most room
                size = sum(p.stat().st_size for p in chunk)
                room = {a: self.max_bytes - (self.out / a).stat().st_size for a in self.groups}
                name = max(room, key=room.get)
                if room[name] < size * 1.01 + 4096:
                    raise PackingError(
                        f"stage {stage} ({size / 2**20:.1f} MiB) fits neither a new file (all {self.max_files} "
                        f"slots of {self.out} are used: {sorted(self.groups)} + {list(self.reserved)}) nor the "
                        f"room left in any archive (at most {room[name] / 2**20:.1f} MiB)")
                self.groups[name].append((stage, src, chunk))
            self._write(name)
            names.append(name)
        return names

    def _write(self, name: str) -> None:
        path = self.out / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        members = []
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for stage, src, files in self.groups[name]:
                for p in files:
                    arc = f"{stage}/{p.relative_to(src).as_posix()}"
                    tar.add(p, arcname=arc, recursive=False)
                    members.append((arc, p.stat().st_size))
        size = tmp.stat().st_size
        if size > self.max_bytes:
            tmp.unlink()
            biggest = sorted(members, key=lambda m: -m[1])[:3]
            raise PackingError(f"{name} would be {size / 2**20:.2f} MiB, over the {self.max_bytes / 2**20:.0f} MiB "
                               f"a returned file may have; largest members: "
                               + ", ".join(f"{a} ({s / 2**20:.2f} MiB)" for a, s in biggest))
        os.replace(tmp, path)

    def catalog(self) -> dict:
        """{archive: {sha256, bytes, stages}} of every archive written so far."""
        return {a: {"sha256": sha256_file(self.out / a), "bytes": (self.out / a).stat().st_size,
                    "stages": sorted({s for s, _, _ in members})} for a, members in sorted(self.groups.items())}

    def check(self) -> list[tuple[str, int]]:
        """Every file under ``out`` within the limits; returns [(name, bytes)] or raises PackingError."""
        return check_folder(self.out, max_files=self.max_files, max_bytes=self.max_bytes)


def check_folder(out: str | os.PathLike, *, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES
                 ) -> list[tuple[str, int]]:
    out = Path(out)
    files = [(p.relative_to(out).as_posix(), p.stat().st_size) for p in sorted(out.rglob("*")) if p.is_file()]
    problems = []
    if len(files) > max_files:
        problems.append(f"{len(files)} files, over the limit of {max_files}: {[f for f, _ in files]}")
    big = [f"{f} ({s / 2**20:.2f} MiB)" for f, s in files if s > max_bytes]
    if big:
        problems.append(f"over {max_bytes / 2**20:.0f} MiB: {', '.join(big)}")
    if problems:
        raise PackingError(f"{out} cannot come back from the GPU machine as it is: " + "; ".join(problems))
    return files


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
                           f"({others or [p.name for p in entries]}); everything in it must come back from the GPU "
                           "machine (8 files at most). Fix: choose an empty folder (on the GPU machine: $OUT)")
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
