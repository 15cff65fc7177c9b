"""Data: datasets under a data root, paired sampling and mixing, batched augmentation, batch sources.

The names below are loaded on first use, so that what needs no torch (the dataset table that validates a
configuration, :data:`DATASETS`) is read without importing it: a command line checks its arguments in
milliseconds, before torch is imported.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "BatchAugment": "augment", "rrc_params": "augment", "resized_crop": "augment",
    "DATASETS": "datasets", "ImageArrays": "datasets", "data_root": "datasets", "dataset_info": "datasets",
    "image_folder": "datasets", "load_arrays": "datasets",
    "ClassIndex": "pairs", "PairedDataset": "pairs", "draw_partners": "pairs", "mix": "pairs", "mix_seed": "pairs",
    "route": "pairs", "sample_lambda": "pairs",
    "LoaderPairSource": "sources", "TensorPairSource": "sources", "build_source": "sources",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_WHERE])
