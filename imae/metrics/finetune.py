"""End-to-end fine-tuning of a pretrained encoder: linear probe, then a short MAE-style fine-tune (LP-FT).

The encoder (a copy; the loaded model stays frozen) gets a linear head on its pooled final-norm output
(``mean`` of the patch tokens, as MAE's global-pool fine-tuning, or ``cls``). With ``head_init="probe"``
(default) the head starts as the encoder's linear probe (:func:`~imae.metrics.probes.linear_classifier` on
the frozen, un-augmented train features, folded back from standardised to raw features), so fine-tuning
starts from the probe's accuracy instead of first undoing a random head's gradients through the encoder
(linear-probe-then-fine-tune, Kumar et al. 2022); ``"zero"`` starts from a near-zero head. Recipe, after
MAE's fine-tuning (shortened): AdamW(0.9, 0.999), lr = blr * batch / 256 with layer-wise lr decay (the head and
final norm at lr, block i at lr * decay^(depth - i), the patch embedding and cls token at lr * decay^(depth
+ 1)), no weight decay on biases, norms and the cls token, per-step linear warmup then half-cosine to
``min_lr``, optional label smoothing and RandomResizedCrop (through :class:`~imae.data.BatchAugment`), flip,
bf16 autocast on CUDA. Omitted for brevity and CPU speed: RandAugment, mixup/cutmix, drop-path, EMA.

The defaults are the recipe measured to work at the CPU edition's scale (the tiny ViT, 10 + 4 pretraining
epochs, all 50,000 CIFAR-10 training images, one epoch; seed 0 of the MAE): a low peak lr (blr 2e-4, layer
decay 0.65, warmup 0.2 epochs) and light augmentation (flip only, no label smoothing). MAE's ImageNet recipe
(blr 1e-3, crops of 20-100 % of the image, label smoothing 0.1) took the same MAE from its probe's 50.8 % down
to 44.8 % after one epoch; with crops of 50-100 % and blr 2e-4, 48.3 %; this recipe reaches 53.3 %, and from
an untrained encoder 45.3 %. The paper-scale campaign uses the same recipe for more epochs.

Test accuracy is measured after every epoch (the per-epoch curve; epoch 0 is the starting head) and the
LAST epoch's is reported — choosing the best epoch would tune on the test set. The same recipe from an
untrained encoder is the from-scratch control; a recipe counts only where it beats both that and the probe.

A fine-tune's result carries its trained classifier (``classifier``: the encoder without the decoder, and the
head), which :func:`imae.metrics.evaluate.write_result` stores as ``finetune_classifier.safetensors``. With
``restore_from`` (such a file, float16 or float32, beside its record ``<name>.json`` with the same recipe),
nothing trains: the stored classifier is scored on the test images again, and the training record (curve,
starting probe) is the stored one. This is how a fresh clone rerunning the CPU edition gets its twelve
fine-tunes in seconds instead of half an hour (:mod:`imae.shipped`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import BatchAugment
from ..data.pairs import mix_seed
from ..errors import ConfigError, ImaeError
from ..schedule import warmup_cosine
from .features import EvalData, autocast, clean_features, pooled
from .probes import linear_classifier


class Classifier(nn.Module):
    """A pretrained MAE encoder + a linear head on pooled tokens."""

    def __init__(self, mae, num_classes: int, pool: str = "mean"):
        super().__init__()
        self.encoder, self.pool = mae, pool
        self.head = nn.Linear(mae.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # a near-zero head leaves the encoder's start intact
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pooled(self.encoder.forward_features(x), (self.pool,))[self.pool])


def _layer_id(name: str, depth: int) -> int:
    if name.startswith(("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1  # final norm and head


def layer_decay_groups(model: Classifier, *, weight_decay: float, layer_decay: float) -> list[dict]:
    """Parameter groups with an ``lr_scale`` per layer and no decay on 1-D parameters and the cls token."""
    depth = len(model.encoder.blocks)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = _layer_id(name, depth)
        no_wd = p.ndim == 1 or name.endswith(".bias") or name == "encoder.cls_token"
        key = (layer, no_wd)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_wd else weight_decay,
                           "lr_scale": layer_decay ** (depth + 1 - layer)}
        groups[key]["params"].append(p)
    return list(groups.values())


@torch.no_grad()
def _test_correct(model: Classifier, data: EvalData, batch_size: int, device) -> torch.Tensor:
    """(N,) bool: which test images the model classifies correctly."""
    model.eval()
    parts = []
    for start in range(0, len(data.test), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data.test)))
        with autocast(device):
            logits = model(data.test.normalized(idx, device))
        parts.append(logits.argmax(dim=1).cpu() == data.test.labels[idx])
    return torch.cat(parts)


HEAD_INITS = ("probe", "zero")
CLASSIFIER_FILE = "finetune_classifier.safetensors"
# What a stored fine-tune must share with the call that restores it (``pool`` and the test split besides).
RECIPE_KEYS = ("epochs", "batch_size", "blr", "min_lr", "weight_decay", "layer_decay", "warmup_epochs",
               "label_smoothing", "crop_scale", "head_init", "pool", "seed")
_NOT_TRAINED = ("encoder.decoder", "encoder.mask_token")  # the decoder takes no part in classification


def classifier_state(model: Classifier) -> dict[str, torch.Tensor]:
    """What a fine-tune trained: the encoder (without decoder and mask token) and the head, on the CPU."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(_NOT_TRAINED)}


def finetune_record(result: dict) -> dict:
    """The record stored beside a fine-tune's classifier (what :func:`finetune` with ``restore_from`` checks and
    reports): the recipe, the test accuracy and curve it trained to, the starting probe, the split sizes, and
    where and how long it trained (``metadata`` of the evaluation)."""
    meta = result.get("metadata", {})
    return {"recipe": {k: result[k] for k in RECIPE_KEYS}, "accuracy": result["accuracy"], "curve": result["curve"],
            "lr": result.get("lr"), "probe": result.get("probe"), "n_train": result.get("n_train"),
            "n_test": result.get("n_test"),
            "trained": {k: meta.get(k) for k in ("device", "device_name", "torch_threads", "wall_time_s",
                                                 "torch_version", "code_version", "finished_at")}}


def _restored(encoder, data: EvalData, path: str, recipe: dict, batch_size: int, device) -> dict:
    """Score the stored classifier ``path`` (its record beside it) on ``data.test``; nothing trains."""
    from safetensors.torch import load_file

    path = Path(path)
    record_file = path.with_suffix(".json")
    if not path.is_file() or not record_file.is_file():
        raise ImaeError(f"restore_from={str(path)!r}: expected {path.name} and {record_file.name} side by side. "
                        f"Fix: pass a stored fine-tune's .safetensors file, or leave restore_from out to train")
    record = json.loads(record_file.read_text())
    stored = record.get("recipe", {})
    differ = {k: (stored.get(k), recipe[k]) for k in RECIPE_KEYS
              if json.dumps(stored.get(k)) != json.dumps(list(recipe[k]) if isinstance(recipe[k], tuple) else recipe[k])}
    if record.get("n_test") != len(data.test):
        differ["test images"] = (record.get("n_test"), len(data.test))
    if differ:
        detail = ", ".join(f"{k} stored {a!r} != asked {b!r}" for k, (a, b) in differ.items())
        raise ImaeError(f"the stored fine-tune {path.name} was trained with another recipe ({detail}). Fix: ask for "
                        f"its recipe, or train afresh (leave restore_from out; IMAE_RETRAIN=1 for the notebooks)")
    model = Classifier(copy.deepcopy(encoder).float(), data.train.num_classes, recipe["pool"])
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in missing if not k.startswith(_NOT_TRAINED)]
    if missing or unexpected:
        raise ImaeError(f"{path.name} does not fit this encoder (missing {missing[:3]}, unexpected {unexpected[:3]}). "
                        f"Fix: restore it onto the run it was fine-tuned from, or train afresh")
    model.to(device)
    correct = _test_correct(model, data, 4 * batch_size, device)
    accuracy = float(correct.float().mean())
    curve = [dict(c) for c in record["curve"]]
    curve[-1]["test_accuracy"] = accuracy  # the stored weights, scored now (the record's value beside it)
    return {"accuracy": accuracy, "curve": curve, **recipe, "crop_scale": list(recipe["crop_scale"]),
            "lr": record.get("lr"), "probe": record.get("probe"), "n_train": record.get("n_train"),
            "n_test": len(data.test),
            "restored": {"file": path.name, "recorded_accuracy": record.get("accuracy"), "trained": record.get("trained")},
            "items": {f"{recipe['pool']}/correct": correct.numpy(), "test_index": np.arange(len(data.test), dtype=np.int64)}}


@torch.no_grad()
def probe_head(model: Classifier, data: EvalData, *, seed: int, device) -> dict:
    """Set ``model.head`` to the linear probe of its (still frozen) encoder: the probe is fitted on
    standardised features, ``((x - m) / s) @ W + b``, which on raw features is ``x @ (W / s) + (b - (m / s) @ W)``.
    Returns the probe's result (without per-item arrays)."""
    model.eval()
    x = clean_features(model.encoder, data.train, device=device, pools=(model.pool,))[model.pool]
    xt = clean_features(model.encoder, data.test, device=device, pools=(model.pool,))[model.pool]
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    fit = linear_classifier(x, data.train.labels, xt, data.test.labels, num_classes=data.train.num_classes,
                            seed=seed, device=device, return_weights=True)
    w, b = fit.pop("weights")
    w_raw = w / std[:, None].to(w.device)
    model.head.weight.copy_(w_raw.T.to(model.head.weight))
    model.head.bias.copy_((b - (mean.to(w.device) / std.to(w.device)) @ w).to(model.head.bias))
    fit.pop("correct", None)
    return fit


def finetune(encoder, data: EvalData, *, epochs: int = 10, batch_size: int = 128, blr: float = 2e-4,
             min_lr: float = 1e-6, weight_decay: float = 0.05, layer_decay: float = 0.65,
             warmup_epochs: float = 0.2, label_smoothing: float = 0.0, crop_scale=(1.0, 1.0),
             head_init: str = "probe", pool: str = "mean", seed: int = 0, restore_from: str | None = None,
             device="cpu") -> dict:
    """Fine-tune a copy of ``encoder`` on the train split and report test accuracy.

    Args:
        encoder: a (frozen) MAE; it is copied, not changed.
        data: train split (fine-tuning) and test split (accuracy).
        epochs: passes over the train split.
        batch_size: images per step (the last, shorter batch of an epoch is kept).
        blr: base lr; lr = blr * batch_size / 256.
        min_lr: the cosine's floor.
        weight_decay: AdamW decoupled weight decay (not on biases, norms, cls token).
        layer_decay: layer-wise lr decay factor.
        warmup_epochs: linear warmup length.
        label_smoothing: cross-entropy smoothing.
        crop_scale: RandomResizedCrop area range (flip always on).
        head_init: ``probe`` (the encoder's linear probe, LP-FT) or ``zero`` (a near-zero head).
        pool: ``mean`` or ``cls``.
        seed: head init, data order, augmentation.
        restore_from: a stored classifier (``.safetensors`` with its ``.json`` record, the same recipe): score
            it instead of training.
        device: where to train.
    Returns:
        ``accuracy`` (final test accuracy), ``curve`` [{epoch, train_loss, test_accuracy, lr, time_s}] (epoch 0:
        the starting head), ``probe`` (the starting probe's penalty and accuracy, with ``head_init="probe"``),
        ``n_train`` (every train image: fine-tuning is never capped), the recipe's values, and ``classifier``
        (the trained weights, :func:`classifier_state`; restored: ``restored``, the stored file and the accuracy
        its record gives, instead).
    """
    if epochs < 1:
        raise ConfigError(f"epochs={epochs} must be >= 1 for fine-tuning")
    if pool not in ("mean", "cls"):
        raise ConfigError(f"pool={pool!r}; choose mean or cls")
    if head_init not in HEAD_INITS:
        raise ConfigError(f"head_init={head_init!r}; choose one of {list(HEAD_INITS)}")
    device = torch.device(device)
    if restore_from is not None:
        recipe = dict(epochs=epochs, batch_size=batch_size, blr=blr, min_lr=min_lr, weight_decay=weight_decay,
                      layer_decay=layer_decay, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
                      crop_scale=tuple(crop_scale), head_init=head_init, pool=pool, seed=seed)
        return _restored(encoder, data, restore_from, recipe, batch_size, device)
    torch.manual_seed(seed)
    mae = copy.deepcopy(encoder).float()
    mae.requires_grad_(True)
    mae.pos_embed.requires_grad_(False)  # fixed sin-cos, as in pretraining
    for name, p in mae.named_parameters():
        if name.startswith(("decoder", "mask_token")):
            p.requires_grad_(False)  # the decoder takes no part in classification
    model = Classifier(mae, data.train.num_classes, pool).to(device)
    curve, t0 = [], time.perf_counter()
    probe = None
    if head_init == "probe":
        probe = probe_head(model, data, seed=seed, device=device)
        start = _test_correct(model, data, 4 * batch_size, device)
        curve.append({"epoch": 0, "train_loss": None, "test_accuracy": float(start.float().mean()), "lr": 0.0,
                      "time_s": round(time.perf_counter() - t0, 3)})
    lr = blr * batch_size / 256
    opt = torch.optim.AdamW(layer_decay_groups(model, weight_decay=weight_decay, layer_decay=layer_decay), lr=lr,
                            betas=(0.9, 0.999))
    n = len(data.train)
    steps_per_epoch = math.ceil(n / batch_size)
    total, warmup = steps_per_epoch * epochs, int(round(warmup_epochs * steps_per_epoch))
    info = data.train.norm
    aug = BatchAugment(data.train.images.shape[-1], (info.mean / 255).flatten().tolist(),
                       (info.std / 255).flatten().tolist(), scale=tuple(crop_scale), hflip=True, train=True)
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    step = 0
    for epoch in range(epochs):
        model.train()
        g = torch.Generator(device=device).manual_seed(mix_seed(seed, epoch))
        perm = torch.randperm(n, generator=g, device=device)
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            # warmup counts the step being taken (no step at lr 0); the cosine then starts at the peak
            cur = warmup_cosine(step + 1 if step < warmup else step, warmup=warmup, total=total, peak=lr,
                                floor=min_lr, ramp_to_peak=True)
            for group in opt.param_groups:
                group["lr"] = cur * group["lr_scale"]
            with autocast(device):
                logits = model(aug(images[idx], g))
            loss = F.cross_entropy(logits.float(), labels[idx], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum = loss_sum + loss.detach() * idx.numel()  # a tensor: no host sync per step
            step += 1
        train_loss = float(loss_sum) / n
        if not math.isfinite(train_loss):
            raise ImaeError(f"fine-tuning loss became {train_loss} in epoch {epoch + 1}; lower blr "
                                     f"(now {blr}) or check the checkpoint")
        correct = _test_correct(model, data, 4 * batch_size, device)
        curve.append({"epoch": epoch + 1, "train_loss": train_loss,
                      "test_accuracy": float(correct.float().mean()), "lr": cur,
                      "time_s": round(time.perf_counter() - t0, 3)})
    return {"accuracy": curve[-1]["test_accuracy"], "curve": curve, "epochs": epochs, "pool": pool,
            "batch_size": batch_size, "blr": blr, "lr": lr, "min_lr": min_lr, "layer_decay": layer_decay,
            "weight_decay": weight_decay, "warmup_epochs": warmup_epochs, "label_smoothing": label_smoothing,
            "crop_scale": list(crop_scale), "head_init": head_init, "seed": seed, "probe": probe, "n_train": n,
            "n_test": len(data.test), "classifier": classifier_state(model),
            "items": {f"{pool}/correct": correct.numpy(), "test_index": np.arange(len(data.test), dtype=np.int64)}}
