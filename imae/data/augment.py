"""Batched RandomResizedCrop + horizontal flip on tensors (GPU or CPU).

Draws crop boxes exactly as ``torchvision.transforms.RandomResizedCrop.get_params`` does (ten attempts at a
random area and log-uniform aspect ratio with integer sides, else the central fallback), for a whole batch
at once, then resamples every crop with one bilinear ``grid_sample`` call whose sampling grid reproduces
torchvision's tensor ``resized_crop`` (bilinear, source coordinates clamped inside the crop). A few kernel
launches per batch instead of one PIL call per image is what lets the data stay on the GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_ATTEMPTS = 10


def rrc_params(n: int, height: int, width: int, *, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
               generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """Crop boxes for ``n`` images: (n, 4) float tensor of (top, left, h, w) in pixels."""
    area = height * width
    shape = (n, _ATTEMPTS)
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(shape, generator=generator, device=device))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(shape, generator=generator, device=device))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)  # first valid attempt (0 if none)
    any_ok = ok.any(dim=1)
    w = torch.gather(w, 1, first).squeeze(1)
    h = torch.gather(h, 1, first).squeeze(1)
    # torchvision's fallback: the central crop with the aspect ratio clamped into `ratio`
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    u = torch.rand((n, 2), generator=generator, device=device)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    top = torch.where(any_ok, top, (height - h) // 2)
    left = torch.where(any_ok, left, (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Crop every image to its box and resize to ``size`` x ``size`` (bilinear), optionally mirrored.

    Computes what ``torchvision.transforms.functional.resized_crop(..., BILINEAR)`` then ``hflip`` compute
    on a tensor when the crop is enlarged (the only case for crops of a ``size`` x ``size`` image): output
    pixel ``i`` samples the crop at ``(i + 0.5) * crop / size - 0.5``, clamped INSIDE the crop, so the
    pixels just outside the box never leak in. One ``grid_sample`` call for the whole batch.

    Args:
        images: (B, C, H, W) float.
        boxes: (B, 4) (top, left, h, w) from :func:`rrc_params`.
        size: output side.
        flip: (B,) bool, mirror horizontally.
    Returns:
        (B, C, size, size) float.
    """
    b, _, height, width = images.shape
    top, left, h, w = boxes.to(images.dtype).unbind(1)
    centre = torch.arange(size, device=images.device, dtype=images.dtype) + 0.5

    def source(start, extent):  # (B,) box -> (B, size) source coordinates in pixels
        s = (centre[None] * (extent / size)[:, None] - 0.5).clamp(min=0)
        return torch.minimum(s, (extent - 1)[:, None]) + start[:, None]

    sx, sy = source(left, w), source(top, h)
    if flip is not None:
        sx = torch.where(flip[:, None], sx.flip(1), sx)
    gx, gy = (2 * sx + 1) / width - 1, (2 * sy + 1) / height - 1  # pixel -> grid_sample's [-1, 1]
    grid = torch.stack([gx[:, None, :].expand(b, size, size), gy[:, :, None].expand(b, size, size)], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class BatchAugment:
    """uint8 images -> augmented, normalised float images, for a whole batch on the images' device.

    Args:
        size: output side.
        mean, std: per-channel normalisation (in [0, 1] units).
        scale: RandomResizedCrop area range.
        hflip: random horizontal flip with p = 0.5.
        train: False gives the un-augmented (resize-free) normalised images.
    """

    def __init__(self, size: int, mean, std, *, scale=(0.2, 1.0), hflip: bool = True, train: bool = True):
        self.size, self.scale, self.hflip, self.train = size, tuple(scale), hflip, train
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255
        self._on: dict = {}  # device -> (mean, std) there: no host-to-device copy per batch

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._on:
            self._on[x.device] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._on[x.device]
        return (x - mean) / std

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None, *,
                 rows: slice | None = None, total: int | None = None) -> torch.Tensor:
        """Augment ``images``. With ``total``/``rows``, the random draws are made for a batch of ``total``
        images and rows ``rows`` of them applied, so data-parallel ranks reproduce one process exactly."""
        x = images.float()
        if self.train:
            n, _, height, width = images.shape
            total = n if total is None else total
            rows = slice(0, n) if rows is None else rows
            boxes = rrc_params(total, height, width, scale=self.scale, generator=generator, device=images.device)
            flip = None
            if self.hflip:
                flip = (torch.rand(total, generator=generator, device=images.device) < 0.5)[rows]
            x = resized_crop(x, boxes[rows], self.size, flip)
        return self.normalize(x)
