"""Datasets under a data root: CIFAR-10/100 (torchvision layout), Tiny-ImageNet and ImageNet (folders).

The data root is, in order: the ``root`` argument, ``$IMAE_DATA``, ``./data``. CIFAR is downloaded with
torchvision when the root lacks it and the network allows; otherwise the error says exactly what to put
where. CIFAR batches are read with a restricted unpickler (numpy arrays and plain types only), so a
tampered file cannot run code.
"""

from __future__ import annotations

import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import DatasetNotFoundError, ImaeError

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str  # cifar | tinyimagenet | imagefolder
    folder: str
    num_classes: int
    img_size: int
    mean: tuple
    std: tuple
    url: Optional[str] = None  # where the user can get it
    in_memory: bool = True  # small enough to hold as a uint8 tensor (tensor loader)


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", "cifar", "cifar-10-batches-py", 10, 32, CIFAR_MEAN, CIFAR_STD,
                           "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    # The 1,000/200-image subset in the same layout (first 100 train / 20 test images per class).
    "cifar10-mini": DatasetInfo("cifar10-mini", "cifar", "cifar-10-mini", 10, 32, CIFAR_MEAN, CIFAR_STD),
    "cifar100": DatasetInfo("cifar100", "cifar", "cifar-100-python", 100, 32,
                            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    "tinyimagenet": DatasetInfo("tinyimagenet", "tinyimagenet", "tiny-imagenet-200", 200, 64,
                                IMAGENET_MEAN, IMAGENET_STD, "http://cs231n.stanford.edu/tiny-imagenet-200.zip"),
    "imagenet": DatasetInfo("imagenet", "imagefolder", "imagenet", 1000, 224, IMAGENET_MEAN, IMAGENET_STD,
                            "https://image-net.org/download.php", in_memory=False),
}


@dataclass
class ImageArrays:
    """A whole split in memory. images: (N, 3, H, W) uint8; labels: (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    info: DatasetInfo

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def data_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root if root is not None else os.environ.get("IMAE_DATA", "data")).expanduser()


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ImaeError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def first_per_class(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first ``n`` items of every class, in original order."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    for c in labels.unique():
        keep[torch.nonzero(labels == c).flatten()[:n]] = True
    return torch.nonzero(keep).flatten()


def load_arrays(name: str, split: str = "train", root=None, *, subset_per_class: int | None = None,
                download: bool = True) -> ImageArrays:
    """Load a split as uint8 tensors (CIFAR, Tiny-ImageNet).

    Args:
        name: a key of ``DATASETS``.
        split: ``train`` or ``test`` (Tiny-ImageNet's ``val`` is its test split).
        root: data root (see module docstring).
        subset_per_class: keep the first N images of every class.
        download: try torchvision's download if the folder is missing (CIFAR only).
    """
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise ImaeError(f"split={split!r}; choose train or test")
    if not info.in_memory:
        raise ImaeError(f"{name} is too large to hold in memory; use data.loader='pil'")
    root = data_root(root)
    if info.kind == "cifar":
        arrays = _load_cifar(info, split, root, download)
    else:
        arrays = _load_tinyimagenet(info, split, root)
    if subset_per_class is not None:
        idx = first_per_class(arrays.labels, subset_per_class)
        arrays = ImageArrays(arrays.images[idx], arrays.labels[idx], arrays.classes, info)
    return arrays


# ------------------------------------------------------------------------------------------------ CIFAR
_CIFAR_FILES = {
    "cifar-10-batches-py": ({"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                            "batches.meta", "labels", "label_names"),
    "cifar-10-mini": ({"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                      "batches.meta", "labels", "label_names"),
    "cifar-100-python": ({"train": ["train"], "test": ["test"]}, "meta", "fine_labels", "fine_label_names"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers; refuses every other global."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: py3 protocol-2 bytes

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            if module.startswith("numpy.core"):
                module = "numpy._core.multiarray" if hasattr(np, "_core") else module
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ImaeError(f"{path} is not a readable CIFAR batch ({e}); delete the folder and fetch it again") from e


def _missing_cifar_files(folder: Path, files: dict, meta: str) -> list[str]:
    names = [meta] + [f for fs in files.values() for f in fs]
    return [n for n in names if not (folder / n).is_file()]


def _load_cifar(info: DatasetInfo, split: str, root: Path, download: bool) -> ImageArrays:
    files, meta_name, label_key, names_key = _CIFAR_FILES[info.folder]
    folder = root / info.folder
    missing = _missing_cifar_files(folder, files, meta_name)
    download_error = None
    if missing and download and info.url:
        download_error = _try_torchvision_download(info, root)
        missing = _missing_cifar_files(folder, files, meta_name)
    if missing:
        expected = ", ".join([meta_name] + [f for fs in files.values() for f in fs])
        why = f" Downloading it failed too ({download_error})." if download_error else (
            " Downloading was not attempted (download disabled)." if info.url else "")
        fix = (f"download {info.url} and extract it into {root.resolve()}, or " if info.url else "")
        raise DatasetNotFoundError(
            f"{info.name} was not found: expected the folder {folder.resolve()} holding {expected} "
            f"(missing: {', '.join(missing)}).{why} Fix: {fix}point IMAE_DATA (or --data-root) at the "
            f"folder that contains {info.folder}/."
        )
    images, labels = [], []
    for name in files[split]:
        d = _read_pickle(folder / name)
        images.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(d[label_key])
    classes = list(_read_pickle(folder / meta_name)[names_key])
    return ImageArrays(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64),
                       classes, info)


def _try_torchvision_download(info: DatasetInfo, root: Path) -> str | None:
    """Returns None on success, else a one-line reason."""
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[info.name]
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
        return None
    except Exception as e:  # network errors come in many types; all mean "not downloadable now"
        return f"{type(e).__name__}: {e}"
    finally:
        socket.setdefaulttimeout(old)


# ----------------------------------------------------------------------------------------- Tiny-ImageNet
def _load_tinyimagenet(info: DatasetInfo, split: str, root: Path) -> ImageArrays:
    from PIL import Image

    folder = root / info.folder
    cache = folder / f"imae_{split}_uint8.npz"
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise DatasetNotFoundError(
            f"tinyimagenet was not found: expected {folder.resolve()} with wnids.txt, train/<wnid>/images/ and "
            f"val/images/ + val/val_annotations.txt. Fix: download {info.url} and unzip it into "
            f"{root.resolve()}, or point IMAE_DATA at the folder that contains tiny-imagenet-200/.")
    wnids = wnids_file.read_text().split()
    if cache.is_file():
        z = np.load(cache)
        return ImageArrays(torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]), wnids, info)
    index = {w: k for k, w in enumerate(wnids)}
    paths, labels = [], []
    if split == "train":
        for w in wnids:
            for p in sorted((folder / "train" / w / "images").glob("*.JPEG")):
                paths.append(p)
                labels.append(index[w])
    else:
        for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
            fname, w = line.split("\t")[:2]
            paths.append(folder / "val" / "images" / fname)
            labels.append(index[w])
    images = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in paths])
    labels = np.asarray(labels, dtype=np.int64)
    try:
        np.savez(cache, images=images, labels=labels)
    except OSError:
        pass  # a read-only data root only costs the decoding time next run
    return ImageArrays(torch.from_numpy(images), torch.from_numpy(labels), wnids, info)


# ------------------------------------------------------------------------------------------ ImageFolder
def image_folder(name: str, split: str = "train", root=None, *, subset_per_class: int | None = None):
    """A torchvision ImageFolder for a split (train/ or val/ under the dataset folder); PIL images."""
    import torchvision

    info = dataset_info(name)
    sub = {"train": "train", "test": "val"}[split]
    folder = data_root(root) / info.folder / sub
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"{name} {split} split not found: expected class folders under {folder.resolve()} "
            f"(ImageFolder layout: {folder}/<class>/<image>). Fix: get it from {info.url} and arrange it so, "
            f"or point IMAE_DATA at the folder that contains {info.folder}/.")
    ds = torchvision.datasets.ImageFolder(str(folder))
    if subset_per_class is not None:
        idx = first_per_class(torch.tensor(ds.targets), subset_per_class).tolist()
        ds.samples = [ds.samples[i] for i in idx]
        ds.targets = [ds.targets[i] for i in idx]
        ds.imgs = ds.samples
    return ds
