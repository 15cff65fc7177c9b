"""Datasets under a data root: CIFAR-10/100 (torchvision layout), Tiny-ImageNet and ImageNet (folders).

The data root is, in order: the ``root`` argument, ``$IMAE_DATA``, ``./data``. CIFAR is downloaded with
torchvision when the root lacks it and the network allows; otherwise the error says exactly what to put
where. CIFAR batches are read with a restricted unpickler (numpy arrays and plain types only), so a
tampered file cannot run code, and checked as they are read: each batch's keys, row size (3 x 32 x 32 bytes),
image and label counts and label range, and the class names; Tiny-ImageNet's and ImageFolder's images must
decode. A file that fails is one :class:`~imae.errors.DataFileError` naming it and the fix; nothing trains on
labels out of step with their images.

torch is imported where it is used, so the dataset table (:data:`DATASETS`, which validates configurations)
loads without it.
"""

from __future__ import annotations

import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import DataFileError, DatasetNotFoundError, ImaeError

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
    import torch

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
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataFileError(f"{path} is not a readable CIFAR batch ({type(e).__name__}: {e}). {_refetch(path)}") from e
    if not isinstance(obj, dict):
        raise DataFileError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch (a dict of data and labels). "
                            f"{_refetch(path)}")
    # Python 3 pickles of a CIFAR batch may key it by bytes (b"data"): the same batch, read the same way.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _refetch(path: Path) -> str:
    """The fix for a damaged file of the CIFAR folder ``path`` lies in."""
    folder = path.parent
    info = next((i for i in DATASETS.values() if i.folder == folder.name), None)
    source = (f"download {info.url} and extract it into {folder.parent}" if info and info.url else
              f"rebuild {folder.name}/ from the full dataset")
    return (f"Fix: delete {folder} and {source} (or `python -m imae make-toy-data {folder.parent}` for the "
            f"synthetic test set)")


CIFAR_ROW = 3 * 32 * 32  # bytes per image: 1024 red, then 1024 green, then 1024 blue


def _check_cifar_batch(d: dict, path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 3, 32, 32) uint8 and labels (N,) int64 of one CIFAR batch, or a DataFileError that says
    what is wrong with ``path``: a missing key, a row that is not 3 x 32 x 32 bytes, pixel values outside
    0..255, a label count other than the image count, a label outside [0, num_classes)."""
    fix = _refetch(path)
    missing = [k for k in ("data", label_key) if k not in d]
    if missing:
        raise DataFileError(f"{path} is not a CIFAR batch: it has no {' and no '.join(map(repr, missing))} "
                            f"(its keys: {sorted(map(str, d))[:8]}). {fix}")
    data = np.asarray(d["data"])
    if data.ndim != 2 or data.shape[1] != CIFAR_ROW:
        raise DataFileError(f"{path}: 'data' has shape {tuple(data.shape)}; a CIFAR batch holds one row of "
                            f"{CIFAR_ROW} bytes (3 x 32 x 32) per image. {fix}")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DataFileError(f"{path}: 'data' holds {data.dtype} values"
                                + (f" from {data.min()} to {data.max()}" if data.size and data.dtype.kind in "iuf"
                                   else "") + f", not bytes (0..255). {fix}")
        data = data.astype(np.uint8)
    try:
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataFileError(f"{path}: {label_key!r} is not a list of class numbers ({e}). {fix}") from e
    if len(labels) != len(data):
        raise DataFileError(f"{path} holds {len(data)} images but {len(labels)} labels ({label_key!r}): the labels "
                            f"would be out of step with the images. {fix}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
        raise DataFileError(f"{path}: label {labels[bad[0]]} of image {bad[0]}{more} is outside "
                            f"0..{num_classes - 1} ({num_classes} classes). {fix}")
    return data.reshape(-1, 3, 32, 32), labels


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
    import torch

    meta = _read_pickle(folder / meta_name)
    classes = meta.get(names_key)
    if not isinstance(classes, (list, tuple)) or len(classes) != info.num_classes:
        found = f"{len(classes)} names" if isinstance(classes, (list, tuple)) else f"{type(classes).__name__}"
        raise DataFileError(f"{folder / meta_name}: {names_key!r} should list the {info.num_classes} class names of "
                            f"{info.name}, found {found}. {_refetch(folder / meta_name)}")
    images, labels = [], []
    for name in files[split]:
        x, y = _check_cifar_batch(_read_pickle(folder / name), folder / name, label_key, info.num_classes)
        images.append(x)
        labels.append(y)
    return ImageArrays(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                       [str(c) for c in classes], info)


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
    folder = root / info.folder
    cache = folder / f"imae_{split}_uint8.npz"
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise DatasetNotFoundError(
            f"tinyimagenet was not found: expected {folder.resolve()} with wnids.txt, train/<wnid>/images/ and "
            f"val/images/ + val/val_annotations.txt. Fix: download {info.url} and unzip it into "
            f"{root.resolve()}, or point IMAE_DATA at the folder that contains tiny-imagenet-200/.")
    import torch

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
    images = np.stack([np.asarray(open_image(p)).transpose(2, 0, 1) for p in paths])
    labels = np.asarray(labels, dtype=np.int64)
    try:
        np.savez(cache, images=images, labels=labels)
    except OSError:
        pass  # a read-only data root only costs the decoding time next run
    return ImageArrays(torch.from_numpy(images), torch.from_numpy(labels), wnids, info)


# ------------------------------------------------------------------------------------------ ImageFolder
def image_folder(name: str, split: str = "train", root=None, *, subset_per_class: int | None = None):
    """A torchvision ImageFolder for a split (train/ or val/ under the dataset folder); PIL images."""
    import torch
    import torchvision

    info = dataset_info(name)
    sub = {"train": "train", "test": "val"}[split]
    folder = data_root(root) / info.folder / sub
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"{name} {split} split not found: expected class folders under {folder.resolve()} "
            f"(ImageFolder layout: {folder}/<class>/<image>). Fix: get it from {info.url} and arrange it so, "
            f"or point IMAE_DATA at the folder that contains {info.folder}/.")
    ds = torchvision.datasets.ImageFolder(str(folder), loader=open_image)
    if subset_per_class is not None:
        idx = first_per_class(torch.tensor(ds.targets), subset_per_class).tolist()
        ds.samples = [ds.samples[i] for i in idx]
        ds.targets = [ds.targets[i] for i in idx]
        ds.imgs = ds.samples
    return ds


def open_image(path) -> "Image.Image":
    """An image file as RGB (PIL), or a :class:`~imae.errors.DataFileError` naming the file when it does not
    decode (empty, truncated, not an image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        why = ("empty, or a format PIL does not know" if isinstance(e, UnidentifiedImageError)
               else f"{type(e).__name__}: {e}")
        raise DataFileError(f"{path} is not a readable image ({why}). Fix: replace it with an intact copy from "
                            f"the dataset's download, or delete it") from e
