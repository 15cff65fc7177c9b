"""Linear separability LS(alpha) — OUR operationalisation; the paper's formulas are not available.

For a mixture ``x_mix = alpha * x_sub + (1 - alpha) * x_dom`` (normalised pixel space, held-out pairs from
the test split, different classes by default), LS asks how well the image-level feature of ``x_mix`` from
the evaluated (frozen, unmasked) encoder LINEARLY predicts the reference encoder's feature of each CLEAN
component. The reference is fixed across the models compared: an i-MAE's teacher, or the MAE itself.

1. **ridge** (refit): closed-form ridge regression (:mod:`imae.metrics.ridge`) from the pooled mixture
   feature to the pooled reference feature of x_sub, and separately of x_dom, fitted on pairs from the train
   split (λ chosen on a validation part of them), scored by held-out variance-weighted R² on test pairs.
2. **no refit**: the model's own linear read-out of every token (cls + all patch tokens) of the UNMASKED
   mixture against the reference target ``T.decoder_embed(T.forward_features(x_clean))``, token by token:
   the i-MAE's splitter heads (``h_sub`` vs x_sub's target, ``h_dom`` vs x_dom's), and for an MAE its own
   ``decoder_embed`` (one head, compared with both). Reported: the mean cosine similarity over tokens and
   pairs, and the variance-weighted R² over all (token, channel) outputs (each output's mean taken over
   pairs). Training distils only over cls + visible tokens of a masked input; this is the unmasked case.
3. **clean_r2**: the same ridge fit from the encoder's feature of a CLEAN image to the reference's feature
   of it — the ceiling LS could reach (≈1 when the model is its own reference).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .features import (DEFAULT_ALPHAS, POOLS, EvalData, autocast, check_alphas, clean_features, make_pairs,
                       mixture_features)
from .loading import LoadedModel
from .ridge import RIDGE_GRID, fit_ridge


def features_at(encoder, split, index: torch.Tensor, **kw) -> dict[str, torch.Tensor]:
    """Clean features for ``index`` (repeats allowed), each distinct image encoded once."""
    uniq, inv = torch.unique(index, return_inverse=True)
    return {p: f[inv] for p, f in clean_features(encoder, split, index=uniq, **kw).items()}


class NoRefitScores:
    """Streams token-level cosine and R² of the model's heads on x_mix against the reference's targets.

    Args:
        model: the evaluated model (its splitter for an i-MAE, else its ``decoder_embed``).
        reference: the reference MAE (targets ``reference.decoder_embed(reference.forward_features(x))``).
        n_alphas: number of alphas swept.
    """

    def __init__(self, model: LoadedModel, reference, n_alphas: int):
        self.model, self.reference = model, reference
        self.head = "splitter" if model.imae is not None else "decoder_embed"
        self._batch = None
        self.stats = [{t: {"sse": 0.0, "cos": 0.0} for t in ("sub", "dom")} for _ in range(n_alphas)]
        self.target_sum = {t: 0.0 for t in ("sub", "dom")}
        self.target_sq = {t: 0.0 for t in ("sub", "dom")}
        self.n, self.tokens = 0, 0

    @torch.no_grad()
    def _targets(self, sl: slice, x_sub, x_dom):
        if self._batch is None or self._batch[0] != (sl.start, sl.stop):
            t = {}
            for name, x in (("sub", x_sub), ("dom", x_dom)):
                with autocast(x.device):
                    t[name] = self.reference.decoder_embed(self.reference.forward_features(x)).double()
                self.target_sum[name] = self.target_sum[name] + t[name].sum(dim=0)
                self.target_sq[name] = self.target_sq[name] + (t[name] ** 2).sum(dim=0)
            self.n += x_sub.shape[0]
            self.tokens = t["sub"].shape[1]
            self._batch = ((sl.start, sl.stop), t)
        return self._batch[1]

    @torch.no_grad()
    def __call__(self, k: int, sl: slice, x_sub, x_dom, tokens) -> None:
        targets = self._targets(sl, x_sub, x_dom)
        with autocast(tokens.device):
            if self.model.imae is not None:
                heads = self.model.imae.split(tokens)
            else:
                h = self.model.mae.decoder_embed(tokens)
                heads = (h, h)
        for name, h in zip(("sub", "dom"), heads):
            h, t = h.double(), targets[name]
            s = self.stats[k][name]
            s["sse"] += float(((h - t) ** 2).sum())
            s["cos"] += float(F.cosine_similarity(h, t, dim=-1).sum())

    def result(self) -> dict:
        out = {"head": self.head, "tokens": f"cls + {self.tokens - 1} patch tokens, unmasked"}
        for name in ("sub", "dom"):
            sst = float((self.target_sq[name] - self.target_sum[name] ** 2 / self.n).sum())
            out[name] = {"cosine": [s[name]["cos"] / (self.n * self.tokens) for s in self.stats],
                         "r2": [1.0 - s[name]["sse"] / sst for s in self.stats]}
        return out


def _no_refit_problem(model: LoadedModel, reference) -> str | None:
    """Why the heads cannot be compared with the reference's targets (None when they can)."""
    d_head = model.mae.decoder_embed_dim
    if d_head != reference.decoder_embed_dim:
        return (f"the model's heads give {d_head}-d tokens but the reference's decoder_embed gives "
                f"{reference.decoder_embed_dim}-d")
    if model.mae.num_patches != reference.num_patches:
        return f"{model.mae.num_patches} vs {reference.num_patches} patch tokens"
    return None


def linear_separability(model: LoadedModel, reference: LoadedModel, data: EvalData, *,
                        alphas: Sequence[float] = DEFAULT_ALPHAS, n_pairs: int | None = None,
                        pairing: str = "different", pools: Sequence[str] = POOLS, seed: int = 0,
                        batch_size: int = 256, device="cpu", grid=RIDGE_GRID, val_fraction: float = 0.2) -> dict:
    """LS(alpha) of ``model`` against ``reference`` (see the module docstring).

    Args:
        model: the evaluated model (MAE or i-MAE).
        reference: the reference encoder (:func:`~imae.metrics.loading.load_reference`).
        data: train split (fitting pairs) and test split (scored pairs).
        alphas: subordinate weights in (0, 0.5].
        n_pairs: pairs per split (None: one per image).
        pairing: ``different`` (default), ``same`` or ``random`` classes within a pair.
        pools: image-level features for the ridge part (``cls``, ``mean``).
        seed: pairs (train: seed, test: seed + 1) and the ridge validation split.
        batch_size, device: feature extraction.
        grid, val_fraction: the ridge penalty search.
    Returns:
        ``alphas``, ``ridge`` {pool: {sub|dom: {r2, lambda, lambda_rel} (lists over alphas)}}, ``clean_r2``
        {pool: R²}, ``no_refit`` {head, tokens, sub|dom: {cosine, r2} (lists)} or None with
        ``no_refit_skipped`` the reason, and the pair counts.
    """
    alphas = check_alphas(alphas)
    ref = reference.mae
    kw = dict(batch_size=batch_size, device=device, pools=pools)
    splits = {"fit": (data.train, make_pairs(data.train.labels, n_pairs, pairing=pairing, seed=seed)),
              "test": (data.test, make_pairs(data.test.labels, n_pairs, pairing=pairing, seed=seed + 1))}
    skipped = _no_refit_problem(model, ref)
    no_refit = NoRefitScores(model, ref, len(alphas)) if skipped is None else None
    x, y = {}, {}
    for name, (split, pairs) in splits.items():
        hook = no_refit if name == "test" else None
        x[name] = mixture_features(model.mae, split, pairs, alphas, on_tokens=hook, **kw)
        y[name] = {"sub": features_at(ref, split, pairs.a, **kw), "dom": features_at(ref, split, pairs.b, **kw)}
    ridge = {}
    for p in pools:
        ridge[p] = {}
        for target in ("sub", "dom"):
            rows = []
            for k in range(len(alphas)):
                fit = fit_ridge(x["fit"][p][k], y["fit"][target][p], grid=grid, val_fraction=val_fraction, seed=seed)
                rows.append((fit.score(x["test"][p][k], y["test"][target][p]), fit.lam, fit.lam_rel))
            ridge[p][target] = {"r2": [r[0] for r in rows], "lambda": [r[1] for r in rows],
                                "lambda_rel": [r[2] for r in rows]}
    # The ceiling: the encoder's feature of a CLEAN subordinate image -> the reference's feature of it.
    clean = {name: features_at(model.mae, split, pairs.a, **kw) for name, (split, pairs) in splits.items()}
    clean_r2 = {p: fit_ridge(clean["fit"][p], y["fit"]["sub"][p], grid=grid, val_fraction=val_fraction, seed=seed)
                .score(clean["test"][p], y["test"]["sub"][p]) for p in pools}
    return {"alphas": alphas, "pools": list(pools), "pairing": pairing, "n_fit_pairs": len(splits["fit"][1]),
            "n_test_pairs": len(splits["test"][1]), "ridge": ridge, "clean_r2": clean_r2,
            "no_refit": no_refit.result() if no_refit is not None else None, "no_refit_skipped": skipped}

