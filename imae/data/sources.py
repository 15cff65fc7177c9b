"""Batch sources for the engine: where training pairs come from.

Both sources yield dicts ``{x_a, y_a[, x_b, y_b], seed}`` already on the training device, ``batch_size //
world`` rows per process, and both are stateless functions of (seed, epoch, batch index), so a run resumed
mid-epoch sees exactly the batches it would have seen.

* :class:`TensorPairSource`: the whole split as uint8 on the device; pairing, crop and flip batched there
  (the fast path, for CIFAR and Tiny-ImageNet).
* :class:`LoaderPairSource`: a PIL/torchvision ``DataLoader`` (ImageNet, and the faithful baseline the
  benchmarks compare against).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError, DataFileError
from .augment import BatchAugment
from .datasets import ImageArrays, dataset_info, image_folder, load_arrays
from .pairs import ClassIndex, PairedDataset, draw_partners, mix_seed


def _check_batch(batch_size: int, n: int, world: int, what: str) -> None:
    if batch_size > n:
        raise ConfigError(
            f"batch_size={batch_size} is larger than the dataset ({n} images in {what}); "
            f"lower batch_size to at most {n} (or use more data: subset_per_class=0 for every image)")
    if batch_size % world:
        raise ConfigError(f"batch_size={batch_size} must be divisible by the number of processes ({world})")


class TensorPairSource:
    """Pairs drawn and augmented on the device from an in-memory uint8 split.

    Args:
        arrays: the split.
        batch_size: global batch (all processes).
        same_prob: P(partner from the anchor's class).
        pairs: also produce partners (i-MAE); MAE needs only x_a.
        augment: the batched transform.
        seed: base seed.
        device: where images live and batches are made.
        rank, world: data-parallel slice of every global batch this process takes.
    """

    def __init__(self, arrays: ImageArrays, *, batch_size: int, same_prob: float, pairs: bool,
                 augment: BatchAugment, seed: int, device, rank: int = 0, world: int = 1):
        _check_batch(batch_size, len(arrays), world, arrays.info.name)
        self.device = torch.device(device)
        self.images = arrays.images.to(self.device)
        self.labels = arrays.labels.to(self.device)
        self.index = ClassIndex(self.labels)
        self.batch_size, self.same_prob, self.pairs = batch_size, same_prob, pairs
        self.augment, self.seed = augment, seed
        self.local = slice(rank * batch_size // world, (rank + 1) * batch_size // world)
        self.num_images = len(arrays)
        self.num_batches = len(arrays) // batch_size  # drop_last, as MAE

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def batches(self, epoch: int, start: int = 0):
        perm = torch.randperm(self.num_images, generator=self._generator(mix_seed(self.seed, epoch)),
                              device=self.device)
        bsz, loc = self.batch_size, self.local
        for b in range(start, self.num_batches):
            seed = mix_seed(self.seed, epoch, b)
            g = self._generator(seed)
            anchors = perm[b * bsz:(b + 1) * bsz]
            partners = draw_partners(self.index, anchors, self.same_prob, g) if self.pairs else None
            a = anchors[loc]
            out = {"seed": seed, "x_a": self.augment(self.images[a], g, rows=loc, total=bsz), "y_a": self.labels[a]}
            if partners is not None:
                p = partners[loc]
                out["x_b"] = self.augment(self.images[p], g, rows=loc, total=bsz)
                out["y_b"] = self.labels[p]
            yield out


class ArrayImageDataset(torch.utils.data.Dataset):
    """An in-memory split served as (PIL image, label), the input torchvision transforms expect."""

    def __init__(self, arrays: ImageArrays):
        self.images = arrays.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = arrays.labels.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return Image.fromarray(np.ascontiguousarray(self.images[i])), self.targets[i]


def pil_transform(size: int, mean, std, *, scale=(0.2, 1.0), hflip: bool = True):
    """The released engine's augmentation: RandomResizedCrop (bicubic) + flip + ToTensor + Normalize."""
    from torchvision import transforms as T

    ops = [T.RandomResizedCrop(size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC)]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])


class LoaderPairSource:
    """Pairs from a multi-worker DataLoader over PIL images (ImageNet scale; the faithful baseline)."""

    def __init__(self, dataset, *, batch_size: int, same_prob: float, pairs: bool, transform, seed: int,
                 device, num_workers: int = 4, rank: int = 0, world: int = 1):
        _check_batch(batch_size, len(dataset), world, type(dataset).__name__)
        self.paired = PairedDataset(dataset, same_prob=same_prob, transform=transform, seed=seed, pairs=pairs)
        self.batch_size, self.pairs, self.seed = batch_size, pairs, seed
        self.device, self.num_workers = torch.device(device), num_workers
        self.rank, self.world = rank, world
        self.num_images = len(dataset)
        self.num_batches = len(dataset) // batch_size

    def batches(self, epoch: int, start: int = 0):
        self.paired.set_epoch(epoch)
        perm = torch.randperm(self.num_images, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        local = self.batch_size // self.world
        order = [int(perm[b * self.batch_size + self.rank * local + k])
                 for b in range(start, self.num_batches) for k in range(local)]
        loader = torch.utils.data.DataLoader(
            self.paired, batch_size=local, sampler=order, num_workers=self.num_workers, drop_last=True,
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for b, items in zip(range(start, self.num_batches), _one_line_errors(loader)):
            xa, xb, ya, yb = items if self.pairs else (items[0], None, items[1], None)
            out = {"seed": mix_seed(self.seed, epoch, b), "x_a": xa.to(self.device, non_blocking=True),
                   "y_a": ya.to(self.device)}
            if self.pairs:
                out["x_b"], out["y_b"] = xb.to(self.device, non_blocking=True), yb.to(self.device)
            yield out


def _one_line_errors(loader):
    """Iterate ``loader``; a DataFileError raised in a worker process (which DataLoader re-raises with the
    worker's whole traceback as its message) comes out as its own one-line message."""
    it = iter(loader)
    while True:
        try:
            items = next(it)
        except StopIteration:
            return
        except DataFileError as e:
            text = str(e)
            if "Original Traceback" not in text:
                raise
            last = [ln for ln in text.splitlines() if ln.strip()][-1]
            raise DataFileError(last.split("DataFileError: ", 1)[-1]) from None
        yield items


def build_source(cfg, *, device, pairs: bool, rank: int = 0, world: int = 1):
    """The training batch source a config asks for (``data.loader``: tensor, pil or auto)."""
    d = cfg.data
    info = dataset_info(d.dataset)
    loader = d.loader if d.loader != "auto" else ("tensor" if info.in_memory else "pil")
    size = cfg.model.img_size
    common = dict(batch_size=cfg.train.batch_size, same_prob=d.same_prob, pairs=pairs, seed=cfg.train.seed,
                  device=device, rank=rank, world=world)
    if info.in_memory:
        arrays = load_arrays(d.dataset, "train", d.root, subset_per_class=d.subset_per_class, download=d.download)
    if loader == "tensor":
        if not info.in_memory:
            raise ConfigError(f"data.loader='tensor' cannot hold {d.dataset} in memory; use data.loader='pil'")
        if arrays.images.shape[-1] != size:
            raise ConfigError(f"{d.dataset} images are {arrays.images.shape[-1]} px but model.img_size={size}; "
                              f"use data.loader='pil' (which resizes) or a preset made for {d.dataset}")
        aug = BatchAugment(size, info.mean, info.std, scale=d.crop_scale, hflip=d.hflip)
        return TensorPairSource(arrays, augment=aug, **common)
    dataset = ArrayImageDataset(arrays) if info.in_memory else image_folder(
        d.dataset, "train", d.root, subset_per_class=d.subset_per_class)
    tf = pil_transform(size, info.mean, info.std, scale=d.crop_scale, hflip=d.hflip)
    return LoaderPairSource(dataset, transform=tf, num_workers=d.num_workers, **common)
