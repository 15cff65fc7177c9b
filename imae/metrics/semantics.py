"""Degree of semantics DS(alpha) — OUR operationalisation; the paper's formulas are not available.

For mixtures ``x_mix = alpha * x_sub + (1 - alpha) * x_dom`` of two images of DIFFERENT classes (default,
so the two labels never coincide), a linear classifier (:func:`~imae.metrics.probes.linear_classifier`) is
trained on the frozen encoder's features of train-split mixtures to predict the subordinate's class, and
separately the dominant's class, and scored on held-out test-split mixtures. DS is that accuracy; it is
also reported as a ratio to the same encoder's clean-image linear-probe accuracy (1 = the class of the
component is as linearly readable from the mixture as from the clean image).
"""

from __future__ import annotations

from typing import Sequence

from .features import DEFAULT_ALPHAS, POOLS, EvalData, check_alphas, make_pairs, mixture_features
from .loading import LoadedModel
from .probes import WEIGHT_DECAYS, linear_classifier, linear_probe


def degree_of_semantics(model: LoadedModel, data: EvalData, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
                        n_pairs: int | None = None, pairing: str = "different", pools: Sequence[str] = POOLS,
                        seed: int = 0, batch_size: int = 256, device="cpu",
                        weight_decays: Sequence[float] = WEIGHT_DECAYS, max_iter: int = 100) -> dict:
    """DS(alpha) of ``model``'s encoder (see the module docstring).

    Args:
        model: the evaluated model (its encoder is used, frozen, on unmasked inputs).
        data: train split (classifier fitting) and test split (scoring).
        alphas: subordinate weights in (0, 0.5].
        n_pairs: pairs per split (None: one per image).
        pairing: ``different`` (default), ``same`` or ``random``.
        pools: image-level features (``cls``, ``mean``).
        seed: pairs (train: seed, test: seed + 1) and the classifiers' validation split.
        batch_size, device: feature extraction and classifier fitting.
        weight_decays, max_iter: the classifier's penalty grid and L-BFGS iterations.
    Returns:
        ``alphas``, ``clean_accuracy`` {pool: clean linear-probe accuracy}, and ``accuracy`` / ``ratio`` /
        ``weight_decay`` as {pool: {sub|dom: list over alphas}}; ``chance`` = 1 / classes.
    """
    alphas = check_alphas(alphas)
    kw = dict(batch_size=batch_size, device=device, pools=pools)
    clf = dict(num_classes=data.train.num_classes, weight_decays=weight_decays, max_iter=max_iter, seed=seed,
               device=device)
    pairs = {"train": make_pairs(data.train.labels, n_pairs, pairing=pairing, seed=seed),
             "test": make_pairs(data.test.labels, n_pairs, pairing=pairing, seed=seed + 1)}
    split = {"train": data.train, "test": data.test}
    feats = {s: mixture_features(model.mae, split[s], pairs[s], alphas, **kw) for s in split}
    labels = {s: {"sub": split[s].labels[pairs[s].a], "dom": split[s].labels[pairs[s].b]} for s in split}
    clean = linear_probe(model.mae, data, pools=pools, batch_size=batch_size, device=device, seed=seed,
                         weight_decays=weight_decays, max_iter=max_iter)
    acc, ratio, wd = {}, {}, {}
    for p in pools:
        acc[p], ratio[p], wd[p] = {}, {}, {}
        for target in ("sub", "dom"):
            runs = [linear_classifier(feats["train"][p][k], labels["train"][target], feats["test"][p][k],
                                      labels["test"][target], **clf) for k in range(len(alphas))]
            acc[p][target] = [r["accuracy"] for r in runs]
            wd[p][target] = [r["weight_decay"] for r in runs]
            base = clean[p]["accuracy"]
            ratio[p][target] = [a / base if base > 0 else float("nan") for a in acc[p][target]]
    return {"alphas": alphas, "pools": list(pools), "pairing": pairing, "n_train_pairs": len(pairs["train"]),
            "n_test_pairs": len(pairs["test"]), "chance": 1.0 / data.train.num_classes,
            "clean_accuracy": {p: clean[p]["accuracy"] for p in pools}, "accuracy": acc, "ratio": ratio,
            "weight_decay": wd}
