"""The transfer limits of a remote machine, and the packing and checks that keep a window within them.

A remote machine of this kind takes the checkout (git's tracked and untracked-not-ignored files) plus named
extra paths, within :data:`UPLOAD_LIMIT` bytes in all, and returns at most :data:`MAX_FILES` files of at most
:data:`MAX_BYTES` each from the window's output folder. :class:`LimitedPacker` replaces the library's
one-archive-per-stage :class:`imae.campaign.packing.Packer`: a stage larger than one file may be is split into
``<stage>.partN.tar.gz`` parts, and when the stages outnumber the free file slots a stage joins the archive
with the most room (the archive is rebuilt from the stage folders, which stay on disk). Any archive over the
size limit, or an output folder over the file limit, is a :class:`~imae.campaign.packing.PackingError` naming
the offenders: nothing is left for the transfer to drop silently.
"""

from __future__ import annotations

import os
from pathlib import Path

from imae.campaign.packing import RESERVED, Packer, PackingError, output_files, stage_files
from imae.pretrained import WeightsError

MAX_FILES = 8  # files the output folder may hold (the manifest and the log included)
MAX_BYTES = 16 * 2**20  # bytes one returned file may have
UPLOAD_LIMIT = 64 * 2**20  # bytes one call may send: the checkout's files + the extra paths
DATA_ARCHIVE_BYTES = 33_496_936  # the compressed CIFAR-10 archives and their unpacking script, sent with each call
MAX_MODEL_BYTES = 15_000_000  # one stored model's weights (every stored model is part of the checkout)


class LimitedPacker(Packer):
    """Archives stage folders into ``out`` within ``max_files`` files of ``max_bytes``; see the module docstring."""

    def __init__(self, out: str | os.PathLike, *, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES,
                 reserved: tuple[str, ...] = RESERVED):
        super().__init__(out)
        self.max_files, self.max_bytes, self.reserved = max_files, max_bytes, reserved
        if max_files <= len(reserved):
            raise PackingError(f"max_files={max_files} leaves no room beside {list(reserved)}")

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
        """(Re)write the archive(s) of ``stage``: one file, or ``<stage>.partN.tar.gz`` parts when it exceeds the
        size limit, or a place in the archive with the most room when no file slot is free."""
        src = Path(src)
        self.drop(stage)
        chunks = self._chunks(stage, stage_files(src))
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
            self.write(name)
            names.append(name)
        return names

    def check_archive(self, name: str, size: int, members: list[tuple[str, int]]) -> None:
        if size > self.max_bytes:
            biggest = sorted(members, key=lambda m: -m[1])[:3]
            raise PackingError(f"{name} would be {size / 2**20:.2f} MiB, over the {self.max_bytes / 2**20:.0f} MiB "
                               f"a returned file may have; largest members: "
                               + ", ".join(f"{a} ({s / 2**20:.2f} MiB)" for a, s in biggest))

    def check(self) -> list[tuple[str, int]]:
        """Every file under ``out`` within the limits; returns [(name, bytes)] or raises PackingError."""
        return check_folder(self.out, max_files=self.max_files, max_bytes=self.max_bytes)


def check_folder(out: str | os.PathLike, *, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES
                 ) -> list[tuple[str, int]]:
    """[(name, bytes)] of the files under ``out``, or a PackingError when they cannot all be returned."""
    files = output_files(out)
    problems = []
    if len(files) > max_files:
        problems.append(f"{len(files)} files, over the limit of {max_files}: {[f for f, _ in files]}")
    big = [f"{f} ({s / 2**20:.2f} MiB)" for f, s in files if s > max_bytes]
    if big:
        problems.append(f"over {max_bytes / 2**20:.0f} MiB: {', '.join(big)}")
    if problems:
        raise PackingError(f"{out} cannot be returned as it is: " + "; ".join(problems))
    return files


def check_weights_budget(folders, *, per_model: int = MAX_MODEL_BYTES, total: int) -> dict:
    """Sizes of every ``*.safetensors`` under ``folders``; raises WeightsError when one model is over
    ``per_model`` bytes or all together are over ``total``. Returns {path: bytes}."""
    sizes = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*.safetensors")):
            sizes[str(p)] = p.stat().st_size
    over = {p: s for p, s in sizes.items() if s > per_model}
    if over:
        raise WeightsError(f"stored weights over {per_model / 1e6:.0f} MB per model: "
                           + ", ".join(f"{p} ({s / 1e6:.1f} MB)" for p, s in over.items()))
    if sum(sizes.values()) > total:
        raise WeightsError(f"stored weights total {sum(sizes.values()) / 1e6:.1f} MB, over the {total / 1e6:.0f} MB "
                           f"budget (they are uploaded with every call, beside the dataset archives): {sorted(sizes)}")
    return sizes


__all__ = ["DATA_ARCHIVE_BYTES", "LimitedPacker", "MAX_BYTES", "MAX_FILES", "MAX_MODEL_BYTES", "UPLOAD_LIMIT",
           "check_folder", "check_weights_budget"]
