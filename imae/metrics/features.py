"""Evaluation images, pairs and frozen-encoder features of clean images and of two-image mixtures.

Features are the final LayerNorm output of the UNMASKED encoder (:meth:`forward_features`): ``cls`` is
token 0, ``mean`` the mean of the patch tokens (cls excluded). Mixtures are made in NORMALISED pixel space,
``x_mix = alpha * x_a + (1 - alpha) * x_b`` with ``x_a`` the subordinate image (``alpha <= 0.5``). Images
are the un-augmented splits (the test split to score, the train split to fit probes), kept as uint8 and
normalised batch by batch, so a whole CIFAR split costs 150 MB, not 600.

Everything runs batched on the CPU or a CUDA device, with bf16 autocast on CUDA only; features come back
as float32 on the CPU.

Inside :func:`use_feature_cache` (which :func:`imae.companion.experiments.cached_evaluation` opens on ``<runs>/.features``),
features are extracted once per (encoder, images, pairs, alphas, pools, device type) and reused by every
metric that needs them (:class:`FeatureCache`): the linear probe, kNN, the degree of semantics' clean probe
and the separability ceiling share one pass over the clean splits; LS and DS share the mixtures; with a
folder, across processes too (the notebooks of a ``reproduce``). The key is a hash of CONTENT (weights,
buffers, module structure, plain attributes, images), never a path or a name, so a retrained model or
another data root is never served stale features. Outside that block nothing is cached: a hand-written
encoder whose output is random or depends on state the key cannot see is always run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..config import RunConfig
from ..data.augment import BatchAugment
from ..data.datasets import dataset_info, first_per_class, load_arrays
from ..data.pairs import ClassIndex, mix
from ..errors import ConfigError
from ..parameters import check_alphas  # noqa: F401  (one check, the command line's and the notebooks')

POOLS = ("cls", "mean")
PAIRINGS = ("different", "same", "random")


@dataclass
class Split:
    """One split in memory. images: (N, 3, H, W) uint8; labels: (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    norm: BatchAugment  # train=False: normalisation only
    name: str
    _key: Optional[str] = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def content_key(self) -> str:
        """A hash of the images, labels and normalisation (computed once; a Split's tensors are not mutated)."""
        if self._key is None:
            h = hashlib.sha1()
            for t in (self.images, self.labels, self.norm.mean, self.norm.std):
                h.update(_tensor_bytes(t))
            self._key = h.hexdigest()
        return self._key

    def normalized(self, idx: torch.Tensor, device) -> torch.Tensor:
        return self.norm(self.images[idx].to(device, non_blocking=True))


@dataclass
class EvalData:
    train: Split
    test: Split
    dataset: str
    root: Optional[str]


def load_eval_data(cfg: RunConfig, *, dataset: str | None = None, data_root: str | None = None,
                   max_images: int | None = None, cap_train: bool = True) -> EvalData:
    """The un-augmented train and test splits of the model's dataset.

    Args:
        cfg: the model's run config (dataset and data root unless overridden).
        dataset, data_root: overrides.
        max_images: keep at most this many images per split, the same number from every class (CPU runs).
        cap_train: False keeps the WHOLE train split and caps the test split only (fine-tuning: the cap that
            sizes frozen-feature evaluations must not starve a model that trains).
    """
    name = dataset or cfg.data.dataset
    root = data_root if data_root is not None else cfg.data.root
    info = dataset_info(name)
    if info.img_size != cfg.model.img_size:
        raise ConfigError(f"dataset {name} has {info.img_size}px images but the model takes "
                          f"{cfg.model.img_size}px; evaluate it on the dataset it was trained for (--dataset)")
    if max_images is not None and max_images < info.num_classes:
        raise ConfigError(f"max_images={max_images} is below the number of classes ({info.num_classes}); "
                          f"pass at least {info.num_classes} (or None for the whole split)")
    norm = BatchAugment(info.img_size, info.mean, info.std, train=False)
    splits = []
    for split in ("train", "test"):
        a = load_arrays(name, split, root, download=cfg.data.download)
        images, labels = a.images, a.labels
        if max_images is not None and max_images < len(labels) and (cap_train or split == "test"):
            idx = first_per_class(labels, max_images // info.num_classes)
            images, labels = images[idx], labels[idx]
        splits.append(Split(images, labels, info.num_classes, norm, split))
    return EvalData(splits[0], splits[1], name, None if root is None else str(root))


# ------------------------------------------------------------------------------------------------ pairs
@dataclass(frozen=True)
class Pairs:
    """Index pairs into one split: ``a`` is the subordinate image, ``b`` the dominant one."""

    a: torch.Tensor
    b: torch.Tensor
    pairing: str

    def __len__(self) -> int:
        return int(self.a.shape[0])


def make_pairs(labels: torch.Tensor, n: int | None = None, *, pairing: str = "different", seed: int = 0) -> Pairs:
    """Seeded pairs: every image is an anchor once (in a random order), ``n`` caps (or cycles) them.

    Args:
        labels: (N,) classes of the split.
        n: number of pairs (None: one per image).
        pairing: ``different`` (partner from another class; the metrics' default, so that the two class
            labels always differ), ``same`` (same class) or ``random`` (any other image).
        seed: pairs are a pure function of (labels, n, pairing, seed).
    """
    if pairing not in PAIRINGS:
        raise ConfigError(f"pairing={pairing!r} is unknown; choose one of {list(PAIRINGS)}")
    if n is not None and n < 1:
        raise ConfigError(f"n_pairs={n} must be a positive number of pairs (or None for one per image)")
    g = torch.Generator().manual_seed(seed)
    total = len(labels)
    n = total if n is None else n
    anchors = torch.cat([torch.randperm(total, generator=g) for _ in range(-(-n // total))])[:n]
    u = torch.rand(n, generator=g)
    if pairing == "random":
        partners = (u * (total - 1)).long().clamp(max=total - 2)
        partners = partners + (partners >= anchors).long()  # skip the anchor itself
    else:
        same = torch.full((n,), pairing == "same")
        partners = ClassIndex(labels).partners(anchors, same, u)
    return Pairs(anchors, partners, pairing)


# --------------------------------------------------------------------------------------------- encoders
def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision on the CPU (where bf16 is slow and gains nothing)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pooled(tokens: torch.Tensor, pools: Sequence[str] = POOLS) -> dict[str, torch.Tensor]:
    """tokens (N, 1 + L, D) -> {``cls``: (N, D), ``mean``: (N, D)} (the mean skips the cls token)."""
    out = {}
    for p in pools:
        if p == "cls":
            out[p] = tokens[:, 0]
        elif p == "mean":
            out[p] = tokens[:, 1:].mean(dim=1)
        else:
            raise ConfigError(f"pool={p!r} is unknown; choose from {list(POOLS)}")
    return out


def _chunks(n: int, batch_size: int):
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return f"{t.dtype}{tuple(t.shape)}".encode() + t.view(torch.uint8).numpy().tobytes() if t.numel() else b"empty"


_PLAIN = (str, int, float, bool, type(None), tuple)


def encoder_key(encoder) -> str:
    """A hash of an encoder's weights, buffers, module structure (its repr: widths, patch size, ...) and
    plain attributes (flags such as ``norm_pix_loss``)."""
    plain = sorted((k, repr(v)) for k, v in vars(encoder).items() if not k.startswith("_") and isinstance(v, _PLAIN))
    h = hashlib.sha1(f"{type(encoder).__module__}.{type(encoder).__qualname__}\n{encoder!r}\n{plain}".encode())
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


class FeatureCache:
    """Pooled features by content key: a small in-memory LRU, and optionally a folder of ``<key>.pt`` files.

    Keys come from :func:`feature_key`. Values are {pool: tensor}; callers get copies, so nothing they do
    changes the cache. ``hits`` / ``misses`` count lookups (the benchmark and the tests read them).
    """

    def __init__(self, max_items: int = 8):
        self.enabled = False  # only inside use_feature_cache(); off, every lookup misses and nothing is stored
        self.folder: Path | None = None
        self.max_items = max_items
        self._memory: OrderedDict[str, dict] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict | None:
        if not self.enabled:
            self.misses += 1
            return None
        value = self._memory.get(key)
        if value is None and self.folder is not None and (self.folder / f"{key}.pt").is_file():
            try:
                value = torch.load(self.folder / f"{key}.pt", map_location="cpu", weights_only=True)
            except Exception:  # a truncated or foreign file: recompute (and overwrite it)
                value = None
            if value is not None:
                self._remember(key, value)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._memory.move_to_end(key)
        return {p: v.clone() for p, v in value.items()}

    def put(self, key: str, value: dict) -> None:
        if not self.enabled:
            return
        value = {p: v.detach().cpu().contiguous() for p, v in value.items()}
        self._remember(key, value)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{key}.{os.getpid()}.tmp"
            torch.save(value, tmp)
            os.replace(tmp, self.folder / f"{key}.pt")  # atomic: a reader never sees half a file

    def clear(self) -> None:
        self._memory.clear()
        self.hits = self.misses = 0

    def _remember(self, key: str, value: dict) -> None:
        self._memory[key] = value
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_items:
            self._memory.popitem(last=False)


FEATURES = FeatureCache()


@contextlib.contextmanager
def use_feature_cache(folder: str | os.PathLike | None = None, *, enabled: bool = True):
    """Within the block, features are cached in memory and, with ``folder``, in ``folder/<key>.pt`` files.
    ``enabled=False`` turns caching off inside the block (the benchmark's "before")."""
    old = FEATURES.enabled, FEATURES.folder
    FEATURES.enabled, FEATURES.folder = enabled, (Path(folder) if folder is not None else None)
    try:
        yield FEATURES
    finally:
        FEATURES.enabled, FEATURES.folder = old


def feature_key(kind: str, encoder, split: Split, device, pools: Sequence[str], *extra) -> str:
    """What determines a set of pooled features: the encoder's and the images' content, the device type
    (bf16 on CUDA), the pools and ``extra`` (pairs, alphas)."""
    h = hashlib.sha1(f"{kind}|{encoder_key(encoder)}|{split.content_key()}|{torch.device(device).type}|"
                     f"{','.join(pools)}".encode())
    for e in extra:
        h.update(_tensor_bytes(e) if isinstance(e, torch.Tensor) else repr(e).encode())
    return h.hexdigest()


@torch.no_grad()
def encode(encoder, x: torch.Tensor) -> torch.Tensor:
    """Unmasked tokens (N, 1 + L, D) as float32 (autocast on CUDA)."""
    with autocast(x.device):
        return encoder.forward_features(x).float()


@torch.no_grad()
def clean_features(encoder, split: Split, *, index: torch.Tensor | None = None, batch_size: int = 256,
                   device="cpu", pools: Sequence[str] = POOLS) -> dict[str, torch.Tensor]:
    """Pooled features of clean images: {pool: (N, D)} float32 on the CPU.

    Inside :func:`use_feature_cache` the whole split is encoded once per encoder and ``index`` selects rows
    of it (a row's feature does not depend on its batch: tested bit for bit); outside, only ``index`` is.

    Args:
        encoder: a frozen MAE.
        split: the images.
        index: which images (default all; repeats allowed).
        batch_size, device: batching.
        pools: which poolings.
    """
    pools = tuple(pools)
    if not FEATURES.enabled:
        return _encode_rows(encoder, split, torch.arange(len(split)) if index is None else index, batch_size,
                            device, pools)
    key = feature_key("clean", encoder, split, device, pools)
    feats = FEATURES.get(key)
    if feats is None:
        feats = _encode_rows(encoder, split, torch.arange(len(split)), batch_size, device, pools)
        FEATURES.put(key, feats)
    return feats if index is None else {p: f[index] for p, f in feats.items()}


def _encode_rows(encoder, split: Split, index: torch.Tensor, batch_size: int, device, pools) -> dict:
    parts: dict[str, list] = {p: [] for p in pools}
    for sl in _chunks(len(index), batch_size):
        batch = pooled(encode(encoder, split.normalized(index[sl], device)), pools)
        for p in pools:
            parts[p].append(batch[p].cpu())
    return {p: torch.cat(v) for p, v in parts.items()}


TokenHook = Callable[[int, slice, torch.Tensor, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def mixture_features(encoder, split: Split, pairs: Pairs, alphas: Sequence[float], *, batch_size: int = 256,
                     device="cpu", pools: Sequence[str] = POOLS, on_tokens: TokenHook | None = None
                     ) -> dict[str, torch.Tensor]:
    """Pooled features of mixtures at every alpha: {pool: (len(alphas), P, D)} float32 on the CPU.

    Args:
        encoder: a frozen MAE.
        split, pairs: the images and which two make each mixture (``pairs.a`` is the subordinate).
        alphas: subordinate weights; x_mix = alpha * x_a + (1 - alpha) * x_b in normalised pixel space.
        batch_size, device, pools: as :func:`clean_features`.
        on_tokens: called as ``on_tokens(k, rows, x_a, x_b, tokens)`` for alpha number ``k`` and every batch
            (tokens (B, 1 + L, D) of the mixture), so callers can stream token-level statistics. Without it,
            features already extracted for the same encoder, pairs and alphas are reused; with it, the
            encoder runs (the hook needs the tokens) and its pooled features are stored for later calls.
    """
    pools = tuple(pools)
    key = None
    if FEATURES.enabled:
        key = feature_key("mixture", encoder, split, device, pools, pairs.a, pairs.b, [float(a) for a in alphas])
        cached = FEATURES.get(key) if on_tokens is None else None
        if cached is not None:
            return cached
    out: dict[str, torch.Tensor] = {}
    for sl in _chunks(len(pairs), batch_size):
        x_a, x_b = split.normalized(pairs.a[sl], device), split.normalized(pairs.b[sl], device)
        for k, alpha in enumerate(alphas):
            tokens = encode(encoder, mix(x_a, x_b, float(alpha)))
            if on_tokens is not None:
                on_tokens(k, sl, x_a, x_b, tokens)
            for p, f in pooled(tokens, pools).items():
                if p not in out:
                    out[p] = torch.empty(len(alphas), len(pairs), f.shape[-1])
                out[p][k, sl] = f.cpu()
    if key is not None and out:
        FEATURES.put(key, out)
    return out


DEFAULT_ALPHAS = tuple(round(0.05 * k, 2) for k in range(1, 11))  # 0.05, 0.10, ..., 0.50
