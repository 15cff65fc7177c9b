"""The benchmark's paths: how each one builds its model, data source and training step.

``faithful`` is the released engine's layout, ``fast`` ours, ``fast+compile`` ours under ``torch.compile``;
see throughput.py for what each means. ``Stepper.step`` mirrors one micro-step of ``imae.train.Trainer``
(seeded mask noise and lambda, autocast forward, backward, AdamW step) without its bookkeeping.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from imae.data.augment import BatchAugment
from imae.data.datasets import ImageArrays, dataset_info
from imae.data.pairs import mix_seed, sample_lambda
from imae.data.sources import ArrayImageDataset, LoaderPairSource, TensorPairSource, pil_transform
from imae.models import freeze_teacher, mae_from_config, set_fused_attention
from imae.train import build_model, param_groups

PATHS = ("faithful", "fast", "fast+compile")


# ------------------------------------------------------------------------------------------------ data
def synthetic_arrays(cfg, n: int, seed: int = 0) -> ImageArrays:
    """``n`` random uint8 images of the preset's size, balanced over the dataset's classes."""
    info = dataset_info(cfg.data.dataset)
    size = cfg.model.img_size
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % info.num_classes
    info = dataclasses.replace(info, name=f"synthetic-{info.name}", img_size=size, in_memory=True)
    return ImageArrays(images, labels, [str(c) for c in range(info.num_classes)], info)


def pool_size(cfg, batch: int) -> int:
    """Images held for the synthetic set: the preset's training set, capped at ~1 GiB (never below a batch)."""
    n_train = {"cifar10": 50_000, "cifar10-mini": 1_000, "cifar100": 50_000, "tinyimagenet": 100_000}.get(
        cfg.data.dataset, 1_281_167)
    if cfg.data.subset_per_class:
        n_train = min(n_train, cfg.data.subset_per_class * dataset_info(cfg.data.dataset).num_classes)
    per_image = 3 * cfg.model.img_size ** 2
    return max(batch, min(n_train, (1 << 30) // per_image))


class Cycled(torch.utils.data.Dataset):
    """``base`` repeated to ``length`` items, so the DataLoader never restarts its workers inside the timing."""

    def __init__(self, base, length: int):
        self.base, self.length = base, length
        self.targets = [base.targets[i % len(base.targets)] for i in range(length)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.base[i % len(self.base.targets)]


def endless(source):
    epoch = 0
    while True:
        yield from source.batches(epoch)
        epoch += 1


# ----------------------------------------------------------------------------------------------- steps
class Stepper:
    """One path of one method: model, teacher, optimizer, batch source and the engine's step."""

    def __init__(self, cfg, path: str, arrays: ImageArrays, device: torch.device, *, workers: int, n_steps: int,
                 compile_mode: str = "default"):
        self.cfg, self.path, self.device = cfg, path, device
        faithful = path == "faithful"
        self.imae = cfg.method == "imae"
        self.teacher = freeze_teacher(mae_from_config(cfg.model)).to(device) if self.imae else None
        cfg = copy.deepcopy(cfg)
        cfg.train.batched = not faithful
        self.model = build_model(cfg, self.teacher).to(device)
        set_fused_attention(self.model, not faithful)
        if self.teacher is not None:
            set_fused_attention(self.teacher, not faithful)
        self.model.train()
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.train.weight_decay), lr=1e-4,
                                           betas=tuple(cfg.train.betas), fused=device.type == "cuda" and not faithful)
        # The released engine ran PyTorch 1.9, whose fp32 matmuls on Ampere/Hopper used TF32 by default
        # (the default became strict fp32 in 1.12): the faithful baseline gets TF32 too, not a slower fp32.
        self.tf32 = faithful
        self.amp = device.type == "cuda" and not faithful
        self.sync_each_step = faithful  # the released engine: loss.item() + finite check every step
        self.forward = self.model
        if path == "fast+compile":
            self.forward = torch.compile(self.model, mode=None if compile_mode == "default" else compile_mode)
        bsz, info = cfg.train.batch_size, arrays.info
        common = dict(batch_size=bsz, same_prob=cfg.data.same_prob, pairs=self.imae, seed=cfg.train.seed,
                      device=device)
        if faithful:
            tf = pil_transform(cfg.model.img_size, info.mean, info.std, scale=cfg.data.crop_scale, hflip=cfg.data.hflip)
            dataset = Cycled(ArrayImageDataset(arrays), bsz * (n_steps + 2))
            self.source = LoaderPairSource(dataset, transform=tf, num_workers=workers, **common)
        else:
            aug = BatchAugment(cfg.model.img_size, info.mean, info.std, scale=cfg.data.crop_scale, hflip=cfg.data.hflip)
            self.source = TensorPairSource(arrays, augment=aug, **common)
        self.batches = endless(self.source)
        self.losses = torch.zeros((), device=device)

    def model_inputs(self, batch: dict):
        """As ``Trainer._forward``: mask noise and lambda from the batch's seed, on the device."""
        t, g = self.cfg.train, torch.Generator(device=self.device).manual_seed(mix_seed(batch["seed"], 7))
        noise = torch.rand((batch["x_a"].shape[0], self.model.mae.num_patches if self.imae else self.model.num_patches),
                           generator=g, device=self.device)
        if not self.imae:
            return (batch["x_a"],), dict(mask_ratio=t.mask_ratio, noise=noise)
        i = self.cfg.imae
        lam = sample_lambda(i.alpha_mode, alpha=i.alpha, alpha_range=i.alpha_range, generator=g, device=self.device)
        return (batch["x_a"], batch["x_b"], lam), dict(mask_ratio=t.mask_ratio, noise=noise, teacher=self.teacher)

    def step(self) -> None:
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
        args, kwargs = self.model_inputs(next(self.batches))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.forward(*args, **kwargs)
        out["loss"].backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.sync_each_step:
            if not math.isfinite(out["loss"].item()):
                raise FloatingPointError("non-finite loss")
        else:
            self.losses += out["loss"].detach().float()  # checked once, after the timing

    def flops_per_image(self) -> float:
        """Model FLOPs of one training step (forward + backward, teacher included) per image."""
        model, teacher = copy.deepcopy(self.model), copy.deepcopy(self.teacher)
        set_fused_attention(model, False)  # explicit matmuls: counted the same on every device
        if teacher is not None:
            set_fused_attention(teacher, False)
        n = min(4, self.cfg.train.batch_size)
        batch = next(self.batches)
        batch = {k: (v[:n] if torch.is_tensor(v) else v) for k, v in batch.items()}
        args, kwargs = self.model_inputs(batch)
        if teacher is not None:
            kwargs["teacher"] = teacher
        with FlopCounterMode(display=False) as counter:
            model(*args, **kwargs)["loss"].backward()
        return counter.get_total_flops() / n


def host_syncs_per_step(st: Stepper, steps: int = 2) -> float | None:
    """CUDA only: synchronising calls per step, counted with ``torch.cuda.set_sync_debug_mode('warn')``."""
    if st.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                st.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def agreement(cfg, device: torch.device, n: int = 8) -> float:
    """Largest relative difference of the loss terms between the faithful and the fast layout (same weights,
    inputs, lambda and mask) on ``device``; fast runs under bf16 autocast on CUDA."""
    torch.manual_seed(0)
    imae = cfg.method == "imae"
    teacher = freeze_teacher(mae_from_config(cfg.model)).to(device) if imae else None
    base = build_model(cfg, teacher).to(device)
    g = torch.Generator(device=device).manual_seed(1)
    size, num = cfg.model.img_size, (cfg.model.img_size // cfg.model.patch_size) ** 2
    x_a, x_b = (torch.randn(n, 3, size, size, generator=g, device=device) for _ in range(2))
    noise = torch.rand(n, num, generator=g, device=device)
    terms = {}
    for name, fused, batched, amp in (("faithful", False, False, False), ("fast", True, True, device.type == "cuda")):
        model, t = copy.deepcopy(base), copy.deepcopy(teacher)
        if imae:
            model.batched = batched
            set_fused_attention(t, fused)
        set_fused_attention(model, fused)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = (model(x_a, x_b, torch.tensor(0.3, device=device), mask_ratio=cfg.train.mask_ratio, noise=noise,
                         teacher=t) if imae else model(x_a, mask_ratio=cfg.train.mask_ratio, noise=noise))
        terms[name] = {k: float(v) for k, v in out.items() if k.startswith("loss")}
    return max(abs(terms["fast"][k] - v) / max(abs(v), 1e-12) for k, v in terms["faithful"].items())
