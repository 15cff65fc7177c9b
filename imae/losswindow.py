"""The loss terms of the steps between two log lines, kept on the device so that a step never waits for the
host: their sum, and the first step whose terms were not all finite (checked when the window is read)."""

from __future__ import annotations

import time

import torch


class LossWindow:
    """Sums the named loss terms of every micro-batch since the last :meth:`read`.

    Args:
        keys: the terms, in the order of the log line (``loss`` first).
        device: where the outputs live (sums stay there).
        images_per_micro_batch: for the throughput of the window.
    """

    def __init__(self, keys: list[str], device: torch.device, images_per_micro_batch: int):
        self.keys, self.device, self.images_per_micro_batch = list(keys), device, images_per_micro_batch
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.keys), device=self.device)
        # the first non-finite micro-batch: [seen (0/1), its optimizer step, its terms...]
        self.first_bad = torch.zeros(len(self.keys) + 2, device=self.device)
        self.count, self.images, self.started = 0, 0, time.perf_counter()

    def add(self, out: dict, step: int) -> None:
        """One micro-batch's outputs (``out[key]`` scalars) at optimizer step ``step`` (1-based)."""
        vec = torch.stack([out[k].detach().float() for k in self.keys])
        self.sums += vec
        new_bad = (~torch.isfinite(vec).all()) & (self.first_bad[0] == 0)
        record = torch.cat([vec.new_ones(1), vec.new_full((1,), step), vec])
        self.first_bad = torch.where(new_bad, record, self.first_bad)
        self.count += 1
        self.images += self.images_per_micro_batch

    def read(self, info=None) -> tuple[dict[str, float], tuple[int, dict[str, float]] | None]:
        """(mean of every term, (step, terms) of the first non-finite micro-batch or None): one host sync.

        Under data parallelism (``info.enabled``) the means are over all processes and the bad step is the
        earliest any process saw (its terms are this process's, if it saw one).
        """
        sums, bad = self.sums, self.first_bad
        if info is not None and info.enabled:
            sums = sums.clone()
            torch.distributed.all_reduce(sums)
            sums = sums / info.world
            step = torch.where(bad[0] > 0, bad[1], torch.full_like(bad[1], float("inf"))).reshape(1)
            torch.distributed.all_reduce(step, op=torch.distributed.ReduceOp.MIN)
            flag = bad[:1].clone()
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = torch.cat([flag, step, bad[2:]])
        means = (sums / max(self.count, 1)).tolist()
        bad = bad.tolist()
        first_bad = (int(bad[1]), dict(zip(self.keys, bad[2:]))) if bad[0] else None
        return dict(zip(self.keys, means)), first_bad
