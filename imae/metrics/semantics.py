"""Degree of semantics DS(alpha) — OUR operationalisation; the paper's formulas are not available.

For mixtures ``x_mix = alpha * x_sub + (1 - alpha) * x_dom`` of two images of DIFFERENT classes (default,
so the two labels never coincide), a linear classifier (:func:`~imae.metrics.probes.linear_classifier`) is
trained on the frozen encoder's features of train-split mixtures to predict the subordinate's class, and
separately the dominant's class, and scored on held-out test-split mixtures. DS is that accuracy; it is
also reported as a ratio to the same encoder's clean-image linear-probe accuracy (1 = the class of the
component is as linearly readable from the mixture as from the clean image). The classifiers' penalty is
chosen on a validation split grouped by IMAGE (no image in both the penalty's fitting and validation
pairs; see :func:`imae.metrics.ridge.group_split`).

**Chance.** With different-class pairs the two labels differ, so once the (easy) dominant class is read
off, a guess of the subordinate among the remaining classes is right 1 / (C - 1) of the time (11.1 % on
CIFAR-10), not 1 / C; ``chance`` is 1 / (C - 1) for ``pairing='different'`` and 1 / C for ``same`` and
``random`` pairs.

**Set-valued score.** At alpha = 0.5 the subordinate and the dominant are interchangeable (which is which
is a coin flip), so per-role accuracy cannot exceed about one half for either. ``set_accuracy`` scores the
unordered pair instead: the sub and dom classifiers' class probabilities are SUMMED (no extra classifier is
trained) and a pair counts as correct when the top-2 classes of that sum equal the set {sub class, dom
class} (for a pair whose two images share a class, the set has one element and the top-1 class must be
it). It is reported at every alpha; its chance level ``set_chance`` is that of a uniformly random guess of
a set of the right size, averaged over the test pairs: 1 / C(C, 2) for different-class pairs (1/45 on
CIFAR-10), 1 / C for same-class pairs.

Per-pair outputs (``items``, for bootstrap intervals and paired differences; not JSON): ``{pool}/{sub|dom}/
correct`` and ``{pool}/set_correct`` (A, P) bool over alphas x test pairs, and the test pairs' image
indices ``pairs_a`` (subordinate), ``pairs_b`` (dominant), (P,) int64.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .features import DEFAULT_ALPHAS, POOLS, EvalData, check_alphas, make_pairs, mixture_features
from .loading import LoadedModel
from .probes import WEIGHT_DECAYS, _probe_calls, clean_split_features, linear_classifiers


def chance_level(num_classes: int, pairing: str) -> float:
    """Per-role chance accuracy (see the module docstring): 1 / (C - 1) for different-class pairs, else 1 / C."""
    return 1.0 / (num_classes - 1) if pairing == "different" and num_classes > 1 else 1.0 / num_classes


def set_correct(probs_sub: np.ndarray, probs_dom: np.ndarray, label_sub, label_dom) -> np.ndarray:
    """(P,) bool: do the top classes of ``probs_sub + probs_dom`` equal the set {label_sub, label_dom}?

    Top-2 for a pair of two classes, top-1 for a pair of one class (same-class pairs).
    """
    score = torch.as_tensor(probs_sub, dtype=torch.float32) + torch.as_tensor(probs_dom, dtype=torch.float32)
    ls, ld = torch.as_tensor(label_sub).long(), torch.as_tensor(label_dom).long()
    top2 = score.topk(min(2, score.shape[1]), dim=1).indices
    both = (top2 == ls[:, None]).any(dim=1) & (top2 == ld[:, None]).any(dim=1)
    return torch.where(ls == ld, top2[:, 0] == ls, both).numpy()


def set_chance(num_classes: int, label_sub, label_dom) -> float:
    """Mean over pairs of a random guess's success: 1 / C(C, 2) for a two-class pair, 1 / C for a one-class pair."""
    same = (torch.as_tensor(label_sub) == torch.as_tensor(label_dom)).double()
    if len(same) == 0:
        return float("nan")
    pair = 1.0 / math.comb(num_classes, 2) if num_classes > 1 else 1.0
    return float((same / num_classes + (1 - same) * pair).mean())


def degree_of_semantics(model: LoadedModel, data: EvalData, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
                        n_pairs: int | None = None, pairing: str = "different", pools: Sequence[str] = POOLS,
                        seed: int = 0, batch_size: int = 256, device="cpu",
                        weight_decays: Sequence[float] = WEIGHT_DECAYS, max_iter: int = 100,
                        shuffled_control: bool = False) -> dict:
    """DS(alpha) of ``model``'s encoder (see the module docstring).

    Args:
        model: the evaluated model (its encoder is used, frozen, on unmasked inputs).
        data: train split (classifier fitting) and test split (scoring).
        alphas: subordinate weights in (0, 0.5].
        n_pairs: pairs per split (None: one per image).
        pairing: ``different`` (default), ``same`` or ``random``.
        pools: image-level features (``cls``, ``mean``).
        seed: pairs (train: seed, test: seed + 1) and the classifiers' validation split.
        batch_size, device: feature extraction and classifier fitting (the classifiers are independent fits:
            on CUDA they run concurrently, see :func:`~imae.metrics.probes.linear_classifiers`).
        weight_decays, max_iter: the classifier's penalty grid and L-BFGS iterations.
        shuffled_control: also fit the subordinate's classifier on train labels shuffled across pairs (the
            same fit, nothing to learn): its test accuracy is the empirical chance of the whole procedure,
            shown beside 1 / (C - 1) and the untrained encoder.
    Returns:
        ``alphas``, ``clean_accuracy`` {pool: clean linear-probe accuracy}, ``accuracy`` / ``ratio`` /
        ``weight_decay`` as {pool: {sub|dom: list over alphas}}, ``set_accuracy`` {pool: list over alphas},
        ``chance`` (1 / (C - 1) for different-class pairs, else 1 / C), ``set_chance``, the pair counts,
        ``shuffled_accuracy`` {pool: list over alphas} (with ``shuffled_control``; per-pair hits in
        ``items["{pool}/shuffled/correct"]``), and ``items`` (per-pair arrays, see the module docstring).
    """
    alphas = check_alphas(alphas)
    kw = dict(batch_size=batch_size, device=device, pools=pools)
    fit_options = dict(weight_decays=weight_decays, max_iter=max_iter, seed=seed, device=device)
    pairs = {"train": make_pairs(data.train.labels, n_pairs, pairing=pairing, seed=seed),
             "test": make_pairs(data.test.labels, n_pairs, pairing=pairing, seed=seed + 1)}
    split = {"train": data.train, "test": data.test}
    feats = {s: mixture_features(model.mae, split[s], pairs[s], alphas, **kw) for s in split}
    labels = {s: {"sub": split[s].labels[pairs[s].a], "dom": split[s].labels[pairs[s].b]} for s in split}
    targets = ("sub", "dom")
    if shuffled_control:  # train labels of the subordinate permuted across pairs (seeded); test labels true
        perm = torch.randperm(len(pairs["train"]), generator=torch.Generator().manual_seed(seed + 7))
        labels["train"]["shuffled"] = labels["train"]["sub"][perm]
        labels["test"]["shuffled"] = labels["test"]["sub"]
        targets = ("sub", "dom", "shuffled")
    groups = torch.stack([pairs["train"].a, pairs["train"].b], dim=1)  # validation split grouped by image
    # Every classifier at once (the clean probe's, as linear_probe fits them, then one per pool x target x
    # alpha): independent fits, which linear_classifiers runs concurrently on CUDA with unchanged results.
    clean_train, clean_test = clean_split_features(model.mae, data, **kw)
    order = [(p, target, k) for p in pools for target in targets for k in range(len(alphas))]
    mixed = [dict(x_train=feats["train"][p][k], y_train=labels["train"][target], x_test=feats["test"][p][k],
                  y_test=labels["test"][target], groups=groups, num_classes=data.train.num_classes,
                  return_probs=True) for p, target, k in order]
    fits = linear_classifiers(_probe_calls(clean_train, clean_test, data, pools) + mixed, **fit_options)
    clean = dict(zip(pools, fits[:len(pools)]))
    fitted = dict(zip(order, fits[len(pools):]))
    acc, ratio, wd, set_acc, shuffled = {}, {}, {}, {}, {}
    items: dict[str, np.ndarray] = {"pairs_a": pairs["test"].a.numpy().astype(np.int64),
                                    "pairs_b": pairs["test"].b.numpy().astype(np.int64)}
    for p in pools:
        acc[p], ratio[p], wd[p] = {}, {}, {}
        runs = {}
        for target in ("sub", "dom"):
            runs[target] = [fitted[p, target, k] for k in range(len(alphas))]
            acc[p][target] = [r["accuracy"] for r in runs[target]]
            wd[p][target] = [r["weight_decay"] for r in runs[target]]
            base = clean[p]["accuracy"]
            ratio[p][target] = [a / base if base > 0 else float("nan") for a in acc[p][target]]
            items[f"{p}/{target}/correct"] = np.stack([r["correct"] for r in runs[target]]).astype(bool)
        hits = np.stack([set_correct(rs["probs"], rd["probs"], labels["test"]["sub"], labels["test"]["dom"])
                         for rs, rd in zip(runs["sub"], runs["dom"])])
        items[f"{p}/set_correct"] = hits
        set_acc[p] = [float(h.mean()) if h.size else float("nan") for h in hits]
        if shuffled_control:
            sh = [fitted[p, "shuffled", k] for k in range(len(alphas))]
            shuffled[p] = [r["accuracy"] for r in sh]
            items[f"{p}/shuffled/correct"] = np.stack([r["correct"] for r in sh]).astype(bool)
    c = data.train.num_classes
    return {"alphas": alphas, "pools": list(pools), "pairing": pairing, "n_train_pairs": len(pairs["train"]),
            "n_test_pairs": len(pairs["test"]), "chance": chance_level(c, pairing),
            "set_chance": set_chance(c, labels["test"]["sub"], labels["test"]["dom"]),
            "clean_accuracy": {p: clean[p]["accuracy"] for p in pools}, "accuracy": acc, "ratio": ratio,
            "set_accuracy": set_acc, "weight_decay": wd, "items": items,
            **({"shuffled_accuracy": shuffled} if shuffled_control else {})}
