"""Preflight of a window: versions, imports and data, before any device time goes into training.

The carried CIFAR-10 packs (``--data-pack``: a folder with ``../shared/data/cifar-10-packed``'s files and a
copy of ``../shared/tools/cifar_unpack.py``) are unpacked with that script, run by the same interpreter,
into the data root, with ``--check`` (sha256 of the decoded arrays). Nothing is ever downloaded: every config
of the campaign has ``data.download=False``.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

from .manifest import CampaignError

PACK_FILES = ("train_jpeg.npz", "test_webp.npz", "batches.meta", "cifar_unpack.py")


class PreflightMixin:
    """:class:`~imae.campaign.runner.Campaign`'s preflight (versions, imports, data)."""

    def preflight(self) -> None:
        t0 = time.monotonic()
        vers = versions(self.device)
        self.window["versions"] = vers
        self.log("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
        check_imports(need_benchmarks="throughput" in self.selected)
        if self.device.type == "cpu" and self.preset not in ("tiny", "small"):
            self.log(f"warning: no CUDA device; the {self.preset} preset on a CPU fits few epochs in the budget")
        self.data_root = self.prepare_data()
        self.common = {**self.cfg.overrides, "data.root": str(self.data_root) if self.data_root else None,
                       "data.download": False, "train.device": str(self.device)}
        base = self.build_config(self.preset, "mae", **self.common)
        from ..data.datasets import dataset_info, load_arrays

        info = dataset_info(base.data.dataset)
        train = load_arrays(base.data.dataset, "train", base.data.root, subset_per_class=base.data.subset_per_class,
                            download=False)
        test = load_arrays(base.data.dataset, "test", base.data.root, download=False)
        self.n_train, self.n_test, self.n_classes = len(train), len(test), info.num_classes
        bs = base.train.batch_size * base.train.accum_iter
        self.images_per_epoch = (self.n_train // base.train.batch_size) * base.train.batch_size
        if self.images_per_epoch < bs:
            raise CampaignError(f"{self.n_train} training images hold no batch of {bs}: lower train.batch_size")
        self.window["data"] = {"dataset": base.data.dataset, "root": str(base.data.root), "n_train": self.n_train,
                               "n_test": self.n_test, "images_per_epoch": self.images_per_epoch}
        self.window["preflight_s"] = round(time.monotonic() - t0, 2)
        self.log(f"data: {base.data.dataset} at {base.data.root}: {self.n_train} train / {self.n_test} test images, "
                 f"{self.images_per_epoch} per epoch (batch {base.train.batch_size})")
        del train, test

    def prepare_data(self) -> Path | None:
        """Unpack the carried packs (if any) into the data root; returns the root (None: the config's)."""
        pack = self.cfg.data_pack
        root = Path(self.cfg.data_root) if self.cfg.data_root else (self.work / "data" if pack else None)
        if pack is None:
            return root
        pack = Path(pack)
        missing = [f for f in PACK_FILES if not (pack / f).is_file()]
        if missing:
            raise CampaignError(
                f"the data pack {pack} lacks {missing}. Fix (here, before the GPU call): mkdir -p {pack} && cp "
                f"../shared/data/cifar-10-packed/* ../shared/tools/cifar_unpack.py {pack}/ and carry it")
        folder = root / "cifar-10-batches-py"
        wanted = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        if all((folder / f).is_file() for f in wanted):
            self.log(f"data: {folder} already unpacked")
            return root
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        cmd = [sys.executable, str(pack / "cifar_unpack.py"), str(root), "--packs", str(pack), "--check"]
        self.log("unpacking CIFAR-10: " + " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=max(10.0, self.clock.remaining() - self.reserve_s))
        except subprocess.TimeoutExpired as e:
            raise CampaignError(f"unpacking the CIFAR-10 packs did not finish in {e.timeout:.0f} s") from e
        if proc.returncode != 0:
            raise CampaignError(f"unpacking the CIFAR-10 packs failed (exit {proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        self.window["unpack_s"] = round(time.monotonic() - t0, 1)
        self.log(f"data: {proc.stdout.strip()} in {self.window['unpack_s']} s")
        return root


def versions(device) -> dict:
    import numpy
    import safetensors
    import timm
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
           "numpy": numpy.__version__, "safetensors": safetensors.__version__, "cuda": torch.version.cuda,
           "device": str(device)}
    for mod in ("torchvision", "PIL"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # optional: only the unpacking needs Pillow
            out[mod] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update({"device_name": props.name, "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1), "bf16": torch.cuda.is_bf16_supported()})
    else:
        out["threads"] = torch.get_num_threads()
    return out


def check_imports(*, need_benchmarks: bool) -> None:
    """Everything the stages import, imported now: a missing package fails before anything trains."""
    mods = ["imae.models", "imae.train", "imae.metrics", "imae.controls", "imae.pretrained", "safetensors.torch",
            "timm", "yaml"]
    if need_benchmarks:
        mods.append("benchmarks.paths")
    missing = []
    for mod in mods:
        try:
            __import__(mod)
        except Exception as e:  # ImportError, or an error raised while importing
            missing.append(f"{mod} ({type(e).__name__}: {e})")
    if missing:
        raise CampaignError(f"cannot import {missing}. Fix: run from the repository root with the python that has "
                            "torch/timm/safetensors; a missing package can be carried as a wheel "
                            "(see ../.library/device/README.md)")

