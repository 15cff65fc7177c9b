"""Reconstruction quality vs alpha: PSNR and SSIM of i-MAE's two reconstructions and of an MAE's one.

Held-out mixtures ``x_mix = alpha * x_sub + (1 - alpha) * x_dom`` (test split, normalised pixel space) are
masked with a SEEDED random mask (the same noise for every alpha and every model), encoded and decoded. The
predicted image is scored after de-normalisation to [0, 1] and clamping, twice: over the FULL image (``psnr``,
``ssim``; visible patches too, whose prediction no loss trains) and over the REMOVED patches only
(``psnr_masked``: the reconstruction of hidden content, what the training loss scores):

* i-MAE: branch ``sub`` against x_sub, branch ``dom`` against x_dom;
* MAE (the evaluated MAE, or for an i-MAE its reference/teacher): its single reconstruction against each;
* ``input``: the mixture itself against each component, the do-nothing baseline.

A model trained with ``norm_pix_loss`` predicts per-patch-normalised pixels, which must be mapped back with
some patch mean and std. The TRUE component's statistics would hand the model the answer (a prediction of
zeros would already reproduce every patch's mean colour), so we use only what the model sees: the VISIBLE
patches of the mixture it encoded. Every patch of an image, visible or removed, is de-normalised with the
same two numbers: the mean over the visible patches of the mixture of their per-patch means, and the mean
over them of their per-patch variances (the unit a norm-pix prediction is expressed in). So a norm-pix
model is scored on the contrast it predicts around the mixture's visible level, never on its target's
statistics; branches that predict different components share that level.

PSNR = 10 log10(1 / MSE) per image (data range 1), capped at :data:`PSNR_CAP` = 100 dB, which is what
identical images (MSE = 0) score. SSIM is Wang et al. (2004): an 11 x 11 Gaussian window with sigma 1.5,
C1 = (0.01)², C2 = (0.03)², computed per channel over 'valid' window positions (no padding) and averaged
over positions and channels. Both are averaged over images.

Per-pair outputs (``items``, for bootstrap intervals and paired differences; not JSON):
``{imae|mae|input}/{sub|dom}/{psnr|psnr_masked|ssim}`` (A, P) float32 over alphas x test pairs, for the
models present, and the test pairs' image indices ``pairs_a``, ``pairs_b`` (P,) int64.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.pairs import mix
from ..errors import ConfigError
from .features import DEFAULT_ALPHAS, EvalData, Split, autocast, check_alphas, make_pairs
from .loading import LoadedModel

PSNR_CAP = 100.0


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB of (N, C, H, W) images, capped at :data:`PSNR_CAP` (identical images)."""
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(data_range ** 2 / mse)).clamp(max=PSNR_CAP)


def psnr_masked(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR over the pixels where ``mask`` (N, H, W) is 1, capped like :func:`psnr`."""
    m = mask.to(x.device, torch.float64).unsqueeze(1)
    se = ((x.double() - y.double()) ** 2 * m).flatten(1).sum(dim=1)
    mse = se / (m.flatten(1).sum(dim=1) * x.shape[1]).clamp(min=1)
    return (10.0 * torch.log10(data_range ** 2 / mse)).clamp(max=PSNR_CAP)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(size,) normalised 1-D Gaussian; the 2-D window is its outer product (separable)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).float()


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM of (N, C, H, W) images (see the module docstring)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim: expected two (N, C, H, W) tensors of one shape, got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    if min(x.shape[-2:]) < size:
        raise ValueError(f"ssim: images of {tuple(x.shape[-2:])} px are smaller than the {size}px window")
    x, y = x.float(), y.float()
    n, c = x.shape[:2]
    g = gaussian_window(size, sigma).to(x.device)
    # The five local moments of every channel in one separable (row, then column) depthwise convolution.
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    k = 5 * c
    blurred = F.conv2d(F.conv2d(stack, g.view(1, 1, 1, size).expand(k, 1, 1, size), groups=k),
                       g.view(1, 1, size, 1).expand(k, 1, size, 1), groups=k)
    mu_x, mu_y, e_xx, e_yy, e_xy = blurred.split(c, dim=1)
    s_xx, s_yy, s_xy = e_xx - mu_x ** 2, e_yy - mu_y ** 2, e_xy - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * s_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (s_xx + s_yy + c2))
    return smap.reshape(n, -1).mean(dim=1)


def to_unit(split: Split, x: torch.Tensor) -> torch.Tensor:
    """Normalised images -> [0, 1] (clamped)."""
    mean, std = split.norm.mean.to(x.device) / 255, split.norm.std.to(x.device) / 255
    return (x.float() * std + mean).clamp(0, 1)


def visible_patch_stats(mae, x: torch.Tensor, visible: torch.Tensor | None = None):
    """Per image: (mean, var), each (N, 1, 1): the mean over ``x``'s visible patches of their per-patch mean
    and of their per-patch variance (``visible`` (N, L), 1 = visible; None: every patch)."""
    patches = mae.patchify(x.float())
    mean, var = patches.mean(dim=-1), patches.var(dim=-1)  # (N, L), as MaskedAutoencoderViT.target_patches
    w = torch.ones_like(mean) if visible is None else visible.to(mean.device, mean.dtype)
    total = w.sum(dim=1).clamp(min=1.0)
    return ((mean * w).sum(dim=1) / total)[:, None, None], ((var * w).sum(dim=1) / total)[:, None, None]


def predicted_image(mae, pred: torch.Tensor, seen: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Patch predictions (N, L, p*p*C) -> a normalised image.

    A norm-pix prediction is de-normalised with :func:`visible_patch_stats` of ``seen``, the image the model
    encoded (the mixture), over its ``visible`` patches ((N, L), 1 = visible; None: all) — never with the
    scored target's statistics (see the module docstring).
    """
    pred = pred.float()
    if mae.norm_pix_loss:
        mean, var = visible_patch_stats(mae, seen, visible)
        pred = pred * (var + 1e-6) ** 0.5 + mean  # the inverse of MaskedAutoencoderViT.target_patches
    return mae.unpatchify(pred)


@torch.no_grad()
def reconstruct(mae, imae, x_mix: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    """Patch predictions of the mixture: (pred_mae, None, mask) for an MAE, (pred_sub, pred_dom, mask) for an i-MAE."""
    with autocast(x_mix.device):
        latent, mask, ids_restore = mae.forward_encoder(x_mix, mask_ratio, noise)
        if imae is None:
            return mae.forward_decoder(latent, ids_restore), None, mask
        pred_sub, pred_dom = imae.decode_both(*imae.split(latent), ids_restore)
        return pred_sub, pred_dom, mask


def _removed_patches(noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """(N, L) patch mask (1 = removed) that ``noise`` gives every model (see random_masking)."""
    keep = int(noise.shape[1] * (1 - mask_ratio))
    ranks = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    return (ranks >= keep).float()


def _mask_image(mae, mask: torch.Tensor) -> torch.Tensor:
    """(N, L) patch mask -> (N, H, W) pixel mask (1 = removed)."""
    p = mae.patch_embed.patch_size
    g = mae.patch_embed.grid
    return mask.reshape(-1, g, g).repeat_interleave(p, 1).repeat_interleave(p, 2)


def reconstruction_quality(model: LoadedModel, baseline: LoadedModel | None, data: EvalData, *,
                           alphas: Sequence[float] = DEFAULT_ALPHAS, n_pairs: int | None = None,
                           pairing: str = "different", mask_ratio: float | None = None, seed: int = 0,
                           batch_size: int = 256, device="cpu", n_examples: int = 4,
                           example_alphas: Sequence[float] = (0.1, 0.3, 0.5)) -> dict:
    """PSNR / SSIM vs alpha (see the module docstring).

    Args:
        model: the evaluated model. An MAE is scored by its single reconstruction; an i-MAE by its two.
        baseline: the MAE whose single reconstruction is reported next to an i-MAE's (its reference/teacher);
            ignored for an MAE, which is its own.
        data: the test split is used.
        alphas: subordinate weights in (0, 0.5].
        n_pairs: number of test pairs (None: one per test image).
        pairing: ``different`` (default), ``same`` or ``random``.
        mask_ratio: default the model's training mask ratio.
        seed: pairs and mask noise.
        batch_size, device: batching.
        n_examples: example pairs returned per example alpha (0: none).
        example_alphas: the alphas of the examples.
    Returns:
        ``alphas``, ``mask_ratio``, ``imae`` / ``mae`` / ``input``: {sub|dom: {psnr, psnr_masked, ssim} (lists
        over alphas)} (``imae`` None for an MAE), ``norm_pix`` flags, ``norm_pix_stats`` (what de-normalises
        a norm-pix prediction), ``psnr_cap``, ``examples`` {alpha: {x_sub, x_dom, x_mix, mae, imae_sub,
        imae_dom: (n, H, W, 3) float32 in [0, 1], mask (n, H, W)}}, and ``items`` (per-pair arrays, see the
        module docstring).
    """
    alphas = check_alphas(alphas)
    example_alphas = check_alphas(example_alphas) if n_examples else []
    mask_ratio = model.config.train.mask_ratio if mask_ratio is None else float(mask_ratio)
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio={mask_ratio} must lie in [0, 1) (e.g. the training ratio 0.75)")
    mae_model = model if model.kind == "mae" else baseline
    imae = model.imae
    for m in {id(x): x for x in (model, mae_model) if x is not None}.values():
        if not m.decoder_loaded:
            raise ConfigError(f"{m.path} has no decoder weights (an encoder-only checkpoint), so it cannot "
                              f"reconstruct; use a full MAE checkpoint (e.g. *_full.pth)")
    split = data.test
    pairs = make_pairs(split.labels, n_pairs, pairing=pairing, seed=seed)
    noise = torch.rand(len(pairs), model.mae.num_patches, generator=torch.Generator().manual_seed(seed + 7))
    names = ["input"] + (["mae"] if mae_model is not None else []) + (["imae"] if imae is not None else [])
    measures = ("psnr", "psnr_masked", "ssim")
    per_pair = {n: {t: {m: np.zeros((len(alphas), len(pairs)), np.float32) for m in measures}
                    for t in ("sub", "dom")} for n in names}
    for start in range(0, len(pairs), batch_size):
        sl = slice(start, min(start + batch_size, len(pairs)))
        x_sub, x_dom = split.normalized(pairs.a[sl], device), split.normalized(pairs.b[sl], device)
        truth = {"sub": to_unit(split, x_sub), "dom": to_unit(split, x_dom)}
        nz = noise[sl].to(device)
        for k, alpha in enumerate(alphas):
            images = _images(mae_model, imae, x_sub, x_dom, alpha, mask_ratio, nz, split)
            removed = images["removed"]
            for n in names:
                for t in ("sub", "dom"):
                    img, out = images[n][t], per_pair[n][t]
                    out["psnr"][k, sl] = psnr(img, truth[t]).float().cpu().numpy()
                    out["psnr_masked"][k, sl] = psnr_masked(img, truth[t], removed).float().cpu().numpy()
                    out["ssim"][k, sl] = ssim(img, truth[t]).float().cpu().numpy()
    # means over pairs in float64 (the per-pair values are float32)
    scores = {n: {t: {m: [float(row.astype(np.float64).mean()) for row in per_pair[n][t][m]] for m in measures}
                  for t in ("sub", "dom")} for n in names}
    items: dict[str, np.ndarray] = {"pairs_a": pairs.a.numpy().astype(np.int64),
                                    "pairs_b": pairs.b.numpy().astype(np.int64)}
    for n in names:
        for t in ("sub", "dom"):
            for m in measures:
                items[f"{n}/{t}/{m}"] = per_pair[n][t][m]
    examples = {}
    if n_examples:
        sl = slice(0, min(n_examples, len(pairs)))
        x_sub, x_dom = split.normalized(pairs.a[sl], device), split.normalized(pairs.b[sl], device)
        for alpha in example_alphas:
            examples[str(alpha)] = _example(mae_model, imae, x_sub, x_dom, alpha, mask_ratio, noise[sl].to(device),
                                            split)
    return {"alphas": alphas, "mask_ratio": mask_ratio, "pairing": pairing, "n_pairs": len(pairs),
            "imae": scores.get("imae"), "mae": scores.get("mae"), "input": scores["input"],
            "mae_source": None if mae_model is None else ("model" if mae_model is model else "reference"),
            "norm_pix": {"model": model.mae.norm_pix_loss,
                         "mae": None if mae_model is None else mae_model.mae.norm_pix_loss},
            "norm_pix_stats": "mean per-patch mean and variance over the mixture's visible patches",
            "psnr_cap": PSNR_CAP, "examples": examples, "items": items}


def _images(mae_model, imae, x_sub, x_dom, alpha, mask_ratio, noise, split) -> dict:
    """Every scored image in [0, 1]: {input|mae|imae: {sub|dom: (B, C, H, W)}}."""
    x_mix = mix(x_sub, x_dom, float(alpha))
    mixed = to_unit(split, x_mix)
    mae_any = mae_model.mae if mae_model is not None else imae.mae
    removed = _removed_patches(noise, mask_ratio)
    visible = 1.0 - removed
    out = {"input": {"sub": mixed, "dom": mixed}, "removed": _mask_image(mae_any, removed)}
    if mae_model is not None:
        pred, _, _ = reconstruct(mae_model.mae, None, x_mix, mask_ratio, noise)
        img = to_unit(split, predicted_image(mae_model.mae, pred, x_mix, visible))
        out["mae"] = {"sub": img, "dom": img}  # one reconstruction, scored against each component
    if imae is not None:
        pred_sub, pred_dom, _ = reconstruct(imae.mae, imae, x_mix, mask_ratio, noise)
        out["imae"] = {"sub": to_unit(split, predicted_image(imae.mae, pred_sub, x_mix, visible)),
                       "dom": to_unit(split, predicted_image(imae.mae, pred_dom, x_mix, visible))}
    return out


def _example(mae_model, imae, x_sub, x_dom, alpha, mask_ratio, noise, split) -> dict:
    images = _images(mae_model, imae, x_sub, x_dom, alpha, mask_ratio, noise, split)

    def hwc(t):
        return t.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)

    ex = {"x_sub": hwc(to_unit(split, x_sub)), "x_dom": hwc(to_unit(split, x_dom)),
          "x_mix": hwc(images["input"]["sub"]), "mask": images["removed"].cpu().numpy().astype(np.float32)}
    if "mae" in images:
        ex["mae"] = hwc(images["mae"]["dom"])  # the same image as images["mae"]["sub"]
    if "imae" in images:
        ex["imae_sub"], ex["imae_dom"] = hwc(images["imae"]["sub"]), hwc(images["imae"]["dom"])
    return ex


SWEEP_ALPHAS = tuple(round(0.05 * k, 2) for k in range(11))  # 0.00, 0.05, ..., 0.50


@torch.no_grad()
def alpha_sweep(model: LoadedModel, baseline: LoadedModel | None, data: EvalData, *,
                alphas: Sequence[float] = SWEEP_ALPHAS, n_examples: int = 2, pairing: str = "different",
                mask_ratio: float | None = None, seed: int = 0, device="cpu") -> dict:
    """The example images of :func:`reconstruction_quality` for a few test pairs across ``alphas``.

    Unlike the metric, ``alpha = 0`` is allowed (the mixture IS the dominant image): the sweep shows what the
    models return as the subordinate fades in. The mask noise is the same at every alpha, so frames differ
    only by the mixing weight.

    Returns:
        {alpha: {x_sub, x_dom, x_mix, mask, mae, imae_sub, imae_dom}} as the metric's ``examples``.
    """
    values = [float(a) for a in alphas]
    bad = [a for a in values if not 0.0 <= a <= 0.5]
    if bad or not values:
        raise ConfigError(f"alpha sweep: alphas={values} must be numbers in [0, 0.5] (the subordinate's weight)")
    if n_examples < 1:
        raise ConfigError(f"n_examples={n_examples} must be >= 1")
    mask_ratio = model.config.train.mask_ratio if mask_ratio is None else float(mask_ratio)
    mae_model = model if model.kind == "mae" else baseline
    split = data.test
    pairs = make_pairs(split.labels, n_examples, pairing=pairing, seed=seed)
    noise = torch.rand(len(pairs), model.mae.num_patches, generator=torch.Generator().manual_seed(seed + 7))
    x_sub, x_dom = split.normalized(pairs.a, device), split.normalized(pairs.b, device)
    return {a: _example(mae_model, model.imae, x_sub, x_dom, a, mask_ratio, noise.to(device), split) for a in values}
