"""Linear separability LS(alpha) — OUR operationalisation; the paper's formulas are not available.

For a mixture ``x_mix = alpha * x_sub + (1 - alpha) * x_dom`` (normalised pixel space, held-out pairs from
the test split, different classes by default), LS asks how well the image-level feature of ``x_mix`` from
the evaluated (frozen, unmasked) encoder LINEARLY predicts the reference encoder's feature of each CLEAN
component. The reference is ONE encoder for every model compared: the i-MAE's teacher, verified by
fingerprint when it is loaded (:func:`~imae.metrics.loading.load_reference`).

1. **ridge** (refit): closed-form ridge regression (:mod:`imae.metrics.ridge`) from the pooled mixture
   feature to the pooled reference feature of x_sub, and separately of x_dom, fitted on pairs from the train
   split (λ chosen on a validation part of them grouped by IMAGE: no image in both the penalty's fitting
   and validation pairs, see :func:`imae.metrics.ridge.group_split`), scored by held-out variance-weighted
   R² on test pairs. ``ratio`` is that R² divided by the clean ceiling ``clean_r2`` (3.), the share of what
   the encoder could give at best. ``const_r2`` is the control that predicts every test pair's target by
   the mean target of the FIT pairs (slightly below 0: the test mean is not known to it).
2. **no refit**: the model's own linear read-out of every token (cls + all patch tokens) of the UNMASKED
   mixture against the reference target ``t = T.decoder_embed(T.forward_features(x_clean))``, token by
   token: the i-MAE's splitter heads (``h_sub`` vs x_sub's target, ``h_dom`` vs x_dom's), and for an MAE its
   own ``decoder_embed`` (one head, compared with both). Both scores are CENTRED, since the raw cosine of
   these tokens sits at the level of a constant predictor (the tokens share a large common part):

   * ``r2``: variance-weighted R² over all (token, channel) outputs, each output's sum of squares taken
     around its mean over the scored test pairs;
   * ``centred_cosine``: the cosine between ``h - m`` and ``t - m``, with ``m`` the mean reference target
     per (token, channel) over the FIT (train-split) pairs, averaged over tokens and pairs. A head that
     outputs the mean target scores 0 on both (R² slightly below 0);
   * ``const_r2``: the R² of predicting ``m`` itself, the constant control.

   Training distils only over cls + visible tokens of a masked input; this is the unmasked case.
3. **clean_r2**: the same ridge fit from the encoder's feature of a CLEAN image to the reference's feature
   of it — the ceiling LS could reach (≈1 when the model is its own reference).

Per-pair outputs (``items``: a flat {name: numpy array}, for bootstrap intervals and paired differences;
A alphas, P test pairs): ``{pool}/{sub|dom}/sse`` (A, P) float32, each pair's squared error summed over the
output dimensions; ``{pool}/{sub|dom}/sst`` (P,), its squared deviation from the mean target of the test
pairs, so that ``1 - sum(sse[k]) / sum(sst)`` is the reported R² at alpha k; ``{pool}/{sub|dom}/sse_const``
(P,), the squared error of the fit pairs' mean target; ``{pool}/clean/sse`` and ``{pool}/clean/sst`` (P,)
for the clean ceiling; ``no_refit/{sub|dom}/sse`` and ``no_refit/{sub|dom}/centred_cosine`` (A, P),
``no_refit/{sub|dom}/sst`` and ``no_refit/{sub|dom}/sse_const`` (P,) (summed over tokens and channels; the
cosine averaged over tokens); ``pairs_a``, ``pairs_b`` (P,) int64, the test pairs' image indices.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .features import (DEFAULT_ALPHAS, POOLS, EvalData, Pairs, Split, _chunks, autocast, check_alphas,
                       clean_features, make_pairs, mixture_features, pooled)
from .loading import LoadedModel
from .ridge import RIDGE_GRID, fit_ridge, row_sse, row_sst

TARGETS = ("sub", "dom")


def features_at(encoder, split, index: torch.Tensor, **kw) -> dict[str, torch.Tensor]:
    """Clean features for ``index`` (repeats allowed), each distinct image encoded once."""
    uniq, inv = torch.unique(index, return_inverse=True)
    return {p: f[inv] for p, f in clean_features(encoder, split, index=uniq, **kw).items()}


def _encode_reference(reference, x: torch.Tensor, targets: bool = True):
    """The reference's unmasked tokens of ``x`` and (``targets``) its token targets ``decoder_embed(tokens)``
    as float64 — computed one way everywhere, so means and per-batch targets agree."""
    with torch.no_grad(), autocast(x.device):
        tokens = reference.forward_features(x)
        t = reference.decoder_embed(tokens) if targets else None
    return tokens.float(), (t.double() if t is not None else None)


@torch.no_grad()
def reference_pass(reference, split: Split, pairs: Pairs, *, batch_size: int = 256, device="cpu",
                   pools: Sequence[str] = POOLS, token_means: bool = True) -> tuple[dict, dict | None]:
    """One pass of the reference over the distinct images of ``pairs``.

    Returns:
        ({sub|dom: {pool: (P, D) pooled clean features of pairs.a | pairs.b}}, and with ``token_means``
        {sub|dom: (1 + L, D_dec) float64 mean token target over the pairs} (else None)).
    """
    n = len(pairs)
    uniq, inv = torch.unique(torch.cat([pairs.a, pairs.b]), return_inverse=True)
    inv_a, inv_b = inv[:n], inv[n:]
    weights = {"sub": torch.bincount(inv_a, minlength=len(uniq)).double(),
               "dom": torch.bincount(inv_b, minlength=len(uniq)).double()}
    parts: dict[str, list] = {p: [] for p in pools}
    sums = {t: 0.0 for t in TARGETS}
    for sl in _chunks(len(uniq), batch_size):
        tokens, t = _encode_reference(reference, split.normalized(uniq[sl], device), token_means)
        for p, f in pooled(tokens, pools).items():
            parts[p].append(f.cpu())
        if token_means:
            for name in TARGETS:
                w = weights[name][sl].to(t.device)
                sums[name] = sums[name] + (t * w[:, None, None]).sum(dim=0)
    feats = {p: torch.cat(v) for p, v in parts.items()}
    out = {"sub": {p: f[inv_a] for p, f in feats.items()}, "dom": {p: f[inv_b] for p, f in feats.items()}}
    means = {name: (sums[name] / max(n, 1)).cpu() for name in TARGETS} if token_means else None
    return out, means


class NoRefitScores:
    """Streams the token-level, centred no-refit scores of the model's heads on x_mix (module docstring, 2.).

    Args:
        model: the evaluated model (its splitter for an i-MAE, else its ``decoder_embed``).
        reference: the reference MAE (targets ``reference.decoder_embed(reference.forward_features(x))``).
        n_alphas: number of alphas swept.
        n_pairs: number of test pairs (rows of the per-pair arrays).
        fit_mean: {sub|dom: (1 + L, D_dec)} mean target over the FIT pairs: the centre of the cosine and the
            constant control's prediction.
        test_mean: {sub|dom: (1 + L, D_dec)} mean target over the scored (test) pairs: the centre of R²'s sum
            of squares.
    Called as a :func:`~imae.metrics.features.mixture_features` token hook: ``(k, rows, x_sub, x_dom, tokens)``.
    """

    def __init__(self, model: LoadedModel, reference, n_alphas: int, n_pairs: int, *, fit_mean: dict,
                 test_mean: dict):
        self.model, self.reference = model, reference
        self.head = "splitter" if model.imae is not None else "decoder_embed"
        self.fit_mean = {t: fit_mean[t].double() for t in TARGETS}
        self.test_mean = {t: test_mean[t].double() for t in TARGETS}
        self._batch = None
        self.sse = {t: np.zeros((n_alphas, n_pairs)) for t in TARGETS}
        self.cos = {t: np.zeros((n_alphas, n_pairs)) for t in TARGETS}
        self.sst = {t: np.zeros(n_pairs) for t in TARGETS}
        self.sse_const = {t: np.zeros(n_pairs) for t in TARGETS}
        self.seen = np.zeros(n_pairs, dtype=bool)
        self.tokens = 0

    @torch.no_grad()
    def _targets(self, sl: slice, x_sub, x_dom):
        if self._batch is None or self._batch[0] != (sl.start, sl.stop):
            t = {}
            for name, x in (("sub", x_sub), ("dom", x_dom)):
                t[name] = _encode_reference(self.reference, x)[1]
                self.sst[name][sl] = ((t[name] - self.test_mean[name].to(t[name].device)) ** 2
                                      ).flatten(1).sum(dim=1).cpu().numpy()
                self.sse_const[name][sl] = ((t[name] - self.fit_mean[name].to(t[name].device)) ** 2
                                            ).flatten(1).sum(dim=1).cpu().numpy()
            self.seen[sl] = True
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
        for name, h in zip(TARGETS, heads):
            h, t = h.double(), targets[name]
            m = self.fit_mean[name].to(t.device)
            self.sse[name][k, sl] = ((h - t) ** 2).flatten(1).sum(dim=1).cpu().numpy()
            self.cos[name][k, sl] = F.cosine_similarity(h - m, t - m, dim=-1).mean(dim=1).cpu().numpy()

    def result(self) -> dict:
        """JSON part: {head, tokens, sub|dom: {r2, centred_cosine (lists over alphas), const_r2}}."""
        if not self.seen.all():
            raise RuntimeError(f"NoRefitScores saw {int(self.seen.sum())} of {len(self.seen)} pairs")
        out = {"head": self.head, "tokens": f"cls + {self.tokens - 1} patch tokens, unmasked",
               "centre": "cosine: mean target of the fit pairs; R²: mean target of the scored pairs"}
        for name in TARGETS:
            sst = float(self.sst[name].sum())
            out[name] = {"r2": [1.0 - float(s.sum()) / sst for s in self.sse[name]],
                         "centred_cosine": [float(c.mean()) for c in self.cos[name]],
                         "const_r2": 1.0 - float(self.sse_const[name].sum()) / sst}
        return out

    def items(self) -> dict[str, np.ndarray]:
        """Per-pair arrays ``no_refit/{sub|dom}/{sse, centred_cosine}`` (A, P), ``.../{sst, sse_const}`` (P,)."""
        out = {}
        for name in TARGETS:
            out[f"no_refit/{name}/sse"] = self.sse[name].astype(np.float32)
            out[f"no_refit/{name}/centred_cosine"] = self.cos[name].astype(np.float32)
            out[f"no_refit/{name}/sst"] = self.sst[name].astype(np.float32)
            out[f"no_refit/{name}/sse_const"] = self.sse_const[name].astype(np.float32)
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


def _f32(x: torch.Tensor) -> np.ndarray:
    return x.float().numpy()


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
        grid, val_fraction: the ridge penalty search (validation grouped by image).
    Returns:
        ``alphas``, ``ridge`` {pool: {sub|dom: {r2, lambda, lambda_rel} (lists over alphas)}}, ``clean_r2``
        {pool: R²}, ``ratio`` {pool: {sub|dom: R² / clean_r2 (list over alphas)}}, ``const_r2`` {pool:
        {sub|dom: R²}}, ``no_refit`` {head, tokens, centre, sub|dom: {r2, centred_cosine (lists), const_r2}}
        or None with ``no_refit_skipped`` the reason, the pair counts, and ``items`` (per-pair arrays, see
        the module docstring).
    """
    alphas = check_alphas(alphas)
    ref = reference.mae
    kw = dict(batch_size=batch_size, device=device, pools=pools)
    splits = {"fit": (data.train, make_pairs(data.train.labels, n_pairs, pairing=pairing, seed=seed)),
              "test": (data.test, make_pairs(data.test.labels, n_pairs, pairing=pairing, seed=seed + 1))}
    skipped = _no_refit_problem(model, ref)
    y, token_mean = {}, {}
    for name, (split, pairs) in splits.items():
        y[name], token_mean[name] = reference_pass(ref, split, pairs, token_means=skipped is None, **kw)
    n_test = len(splits["test"][1])
    no_refit = (NoRefitScores(model, ref, len(alphas), n_test, fit_mean=token_mean["fit"],
                              test_mean=token_mean["test"]) if skipped is None else None)
    x = {}
    for name, (split, pairs) in splits.items():
        hook = no_refit if name == "test" else None
        x[name] = mixture_features(model.mae, split, pairs, alphas, on_tokens=hook, **kw)
    fit_pairs = splits["fit"][1]
    groups = torch.stack([fit_pairs.a, fit_pairs.b], dim=1)  # the penalty's validation split, by image
    ridge_kw = dict(grid=grid, val_fraction=val_fraction, seed=seed)
    test_pairs = splits["test"][1]
    items: dict[str, np.ndarray] = {"pairs_a": test_pairs.a.numpy().astype(np.int64),
                                    "pairs_b": test_pairs.b.numpy().astype(np.int64)}
    ridge, const_r2 = {}, {}
    for p in pools:
        ridge[p], const_r2[p] = {}, {}
        for target in TARGETS:
            y_fit, y_test = y["fit"][target][p], y["test"][target][p]
            sst = row_sst(y_test)
            sse_const = row_sse(y_test, y_fit.double().mean(dim=0).expand_as(y_test))
            rows, sse = [], []
            for k in range(len(alphas)):
                fit = fit_ridge(x["fit"][p][k], y_fit, groups=groups, **ridge_kw)
                e = row_sse(y_test, fit.predict(x["test"][p][k]))
                rows.append((1.0 - float(e.sum() / sst.sum()), fit.lam, fit.lam_rel))
                sse.append(e)
            ridge[p][target] = {"r2": [r[0] for r in rows], "lambda": [r[1] for r in rows],
                                "lambda_rel": [r[2] for r in rows]}
            const_r2[p][target] = 1.0 - float(sse_const.sum() / sst.sum())
            items[f"{p}/{target}/sse"] = _f32(torch.stack(sse))
            items[f"{p}/{target}/sst"] = _f32(sst)
            items[f"{p}/{target}/sse_const"] = _f32(sse_const)
    # The ceiling: the encoder's feature of a CLEAN subordinate image -> the reference's feature of it.
    clean = {name: features_at(model.mae, split, pairs.a, **kw) for name, (split, pairs) in splits.items()}
    clean_r2 = {}
    for p in pools:
        fit = fit_ridge(clean["fit"][p], y["fit"]["sub"][p], groups=fit_pairs.a, **ridge_kw)
        y_test = y["test"]["sub"][p]
        e, sst = row_sse(y_test, fit.predict(clean["test"][p])), row_sst(y_test)
        clean_r2[p] = 1.0 - float(e.sum() / sst.sum())
        items[f"{p}/clean/sse"], items[f"{p}/clean/sst"] = _f32(e), _f32(sst)
    ratio = {p: {t: [r / clean_r2[p] if clean_r2[p] > 0 else float("nan") for r in ridge[p][t]["r2"]]
                 for t in TARGETS} for p in pools}
    if no_refit is not None:
        items.update(no_refit.items())
    return {"alphas": alphas, "pools": list(pools), "pairing": pairing, "n_fit_pairs": len(fit_pairs),
            "n_test_pairs": n_test, "ridge": ridge, "clean_r2": clean_r2, "ratio": ratio, "const_r2": const_r2,
            "no_refit": no_refit.result() if no_refit is not None else None, "no_refit_skipped": skipped,
            "items": items}
