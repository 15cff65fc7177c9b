"""Paired sampling and mixing.

A training item is two images (x_a, x_b). With probability ``same_prob`` x_b comes from x_a's class, else
uniformly from the images of all OTHER classes. They are mixed with one lambda per batch,
``x_mix = lam * x_a + (1 - lam) * x_b``; the image with the smaller weight alpha = min(lam, 1 - lam) is the
*subordinate*, the other the *dominant*. All of it is vectorised torch code, so it runs on the GPU next to
the data, and the PIL DataLoader path (:class:`PairedDataset`) calls the same partner function.
"""

from __future__ import annotations

import torch

from ..mixing import mix, route  # noqa: F401  (re-exported: the data path mixes pairs with them)


class ClassIndex:
    """Images grouped by class, for O(1) vectorised partner draws.

    Args:
        labels: (N,) int64 class of every image.
    """

    def __init__(self, labels: torch.Tensor):
        labels = labels.long()
        self.labels = labels
        self.order = torch.argsort(labels, stable=True)  # image indices grouped by class
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
        self.count = torch.bincount(labels, minlength=num_classes)
        self.start = torch.cumsum(self.count, 0) - self.count
        self.n = labels.numel()
        self.rank = torch.empty_like(self.order)  # position of every image in the class-grouped order
        self.rank[self.order] = torch.arange(self.n, device=labels.device)

    def to(self, device) -> "ClassIndex":
        for k in ("labels", "order", "count", "start", "rank"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    def partners(self, anchors: torch.Tensor, same: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Partner index for every anchor.

        Args:
            anchors: (B,) image indices.
            same: (B,) bool, draw from the anchor's class (True) or from all other classes (False).
            u: (B,) uniform [0, 1) numbers that decide which partner (explicit, so callers control seeding).
        Returns:
            (B,) partner indices. A same-class draw avoids the anchor itself when its class has >1 image.
        """
        y = self.labels[anchors]
        start, count = self.start[y], self.count[y]
        # same class: a uniform position among the class's other images (skip the anchor's own slot)
        others = (count - 1).clamp(min=1)
        pos = (u * others).long().clamp(max=others - 1)
        rank_of_anchor = self.rank[anchors] - start
        pos = torch.where((count > 1) & (pos >= rank_of_anchor), pos + 1, pos)
        same_idx = self.order[start + pos.clamp(max=count - 1)]
        # different class: uniform over the N - count images outside the class, skipping its block
        outside = (self.n - count).clamp(min=1)
        r = (u * outside).long().clamp(max=outside - 1)
        r = torch.where(r >= start, r + count, r)
        diff_idx = self.order[r.clamp(max=self.n - 1)]
        return torch.where(same, same_idx, diff_idx)


def draw_partners(index: ClassIndex, anchors: torch.Tensor, same_prob: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Partners with P(same class) = ``same_prob`` (same_prob=1 is the released code's hard-coded value)."""
    dev = anchors.device
    same = torch.rand(anchors.shape, generator=generator, device=dev) < same_prob
    u = torch.rand(anchors.shape, generator=generator, device=dev)
    return index.partners(anchors, same, u)


def sample_lambda(mode: str, *, alpha: float = 0.3, alpha_range=(0.0, 0.5),
                  generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
    """One mixing weight lambda (a 0-d tensor, kept on ``device`` so no host sync is needed).

    random: lambda ~ Beta(1, 1) = U(0, 1), as the released code (alpha = min(lambda, 1 - lambda) ~ U(0, 0.5)).
    fixed: lambda = alpha (x_a is the subordinate). range: lambda = alpha ~ U(lo, hi).
    """
    u = torch.rand((), generator=generator, device=device)
    if mode == "random":
        return u
    if mode == "fixed":
        return torch.full((), float(alpha), device=device)
    if mode == "range":
        lo, hi = alpha_range
        return lo + (hi - lo) * u
    raise ValueError(f"alpha mode {mode!r}; choose random, fixed or range")


class PairedDataset(torch.utils.data.Dataset):
    """Pairs on top of an (image, label) dataset for the DataLoader path; each image augmented on its own.

    Item ``i`` of epoch ``e`` is anchor ``i`` and a partner drawn with a generator seeded by
    (seed, e, i), so the pairing is reproducible with any number of workers and after a resume.

    Args:
        base: dataset returning (PIL image, label); needs ``targets``.
        same_prob: P(partner from the same class).
        transform: applied to each image independently.
        seed: base seed.
    """

    def __init__(self, base, *, same_prob: float, transform=None, seed: int = 0, pairs: bool = True):
        self.base, self.same_prob, self.transform, self.seed = base, same_prob, transform, seed
        self.pairs = pairs  # False: items are (image, label) only (MAE)
        self.index = ClassIndex(torch.as_tensor(base.targets))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        tf = self.transform or (lambda img: img)
        img_a, y_a = self.base[i]
        if self.pairs:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, i))
            j = int(draw_partners(self.index, torch.tensor([i]), self.same_prob, g)[0])
            img_b, y_b = self.base[j]
        # torchvision's transforms draw from the global RNG: seed it per item, without disturbing the caller's
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed + 1, self.epoch, i))
            if not self.pairs:
                return tf(img_a), y_a
            return tf(img_a), tf(img_b), y_a, y_b


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from integers (seed, epoch, step, ...)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) + 0x9E3779B9 + ((h << 6) & (2**64 - 1)) + (h >> 2))) & (2**64 - 1)
    return h % (2**63 - 1)



__all__ = ["ClassIndex", "draw_partners", "sample_lambda", "mix", "route", "PairedDataset", "mix_seed"]
