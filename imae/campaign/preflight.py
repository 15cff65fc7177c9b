"""Preflight of a window: versions, imports and data, before any device time goes into training.

The dataset is read where the configuration says (``--data-root``, else ``$IMAE_DATA`` or ``./data``);
nothing is ever downloaded (every config of the campaign has ``data.download=False``), so a job on a node
without network fails here, in seconds, with the message that names the missing files. A window that must put
the data in place first (copy it to a node's local disk, unpack an archive) passes
:attr:`~imae.campaign.state.CampaignConfig.prepare_data`.
"""

from __future__ import annotations

import platform
import time

from ..config import CPU_PRESETS
from .manifest import CampaignError
from .state import Window


def preflight(w: Window) -> None:
    """Record the versions, import what the stages need, find the data and size an epoch."""
    from ..config import build_config
    from ..data.datasets import dataset_info, load_arrays

    t0 = time.monotonic()
    vers = versions(w.device)
    w.record["versions"] = vers
    w.log("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    check_imports(need_benchmarks="throughput" in w.selected)
    if w.device.type == "cpu" and w.preset not in CPU_PRESETS:
        w.log(f"warning: no CUDA device; the {w.preset} preset on a CPU fits few epochs in the budget")
    w.data_root = w.cfg.prepare_data(w) if w.cfg.prepare_data else w.cfg.data_root
    w.common = {**w.cfg.overrides, "data.root": str(w.data_root) if w.data_root else None,
                "data.download": False, "train.device": str(w.device)}
    base = build_config(w.preset, "mae", **w.common)
    info = dataset_info(base.data.dataset)
    train = load_arrays(base.data.dataset, "train", base.data.root, subset_per_class=base.data.subset_per_class,
                        download=False)
    test = load_arrays(base.data.dataset, "test", base.data.root, download=False)
    w.n_train, w.n_test, w.n_classes = len(train), len(test), info.num_classes
    bs = base.train.batch_size * base.train.accum_iter
    w.images_per_epoch = (w.n_train // base.train.batch_size) * base.train.batch_size
    if w.images_per_epoch < bs:
        raise CampaignError(f"{w.n_train} training images hold no batch of {bs}: lower train.batch_size")
    w.record["data"] = {"dataset": base.data.dataset, "root": str(base.data.root), "n_train": w.n_train,
                        "n_test": w.n_test, "images_per_epoch": w.images_per_epoch}
    w.record["preflight_s"] = round(time.monotonic() - t0, 2)
    w.log(f"data: {base.data.dataset} at {base.data.root}: {w.n_train} train / {w.n_test} test images, "
          f"{w.images_per_epoch} per epoch (batch {base.train.batch_size})")


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
        except Exception:  # optional: only the faithful benchmark path needs them
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
                            "torch, timm and safetensors (pip install -e . in this checkout)")


__all__ = ["check_imports", "preflight", "versions"]
