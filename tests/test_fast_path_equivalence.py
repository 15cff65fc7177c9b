"""The fast path computes what the faithful path computes; the batched augmentation draws what torchvision draws.

(i) i-MAE loss and gradients: batched vs separate decoder/teacher calls and fused (SDPA) vs explicit attention
    agree to fp32 rounding; bf16 autocast (CPU) agrees within a bf16 tolerance.
(ii) crop boxes and flips: same distributions as torchvision's RandomResizedCrop.get_params and
     RandomHorizontalFlip (two-sample KS / binomial, fixed seeds); crops applied as torchvision's
     tensor resized_crop (bilinear) + hflip.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats

from imae.data.augment import BatchAugment, resized_crop, rrc_params
from imae.models import IMAE, MaskedAutoencoderViT, freeze_teacher, set_fused_attention

ARCH = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=24,
            decoder_depth=2, decoder_num_heads=2)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # the GPU machine runs both
BF16_RTOL = 1e-2  # bf16 keeps 8 significant bits (eps 2**-8 = 0.4 %); measured errors here are <= 0.07 %


def _imae_setup(seed: int = 0, n: int = 6, device: str = "cpu"):
    torch.manual_seed(seed)
    teacher = freeze_teacher(MaskedAutoencoderViT(**ARCH)).to(device)
    student = IMAE(MaskedAutoencoderViT(**ARCH), batched=True).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    x_a, x_b = torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)
    noise = torch.rand(n, student.mae.num_patches, generator=g)
    return student, teacher, x_a.to(device), x_b.to(device), noise.to(device)


def _loss_and_grads(model, teacher, x_a, x_b, lam, noise, *, bf16: bool = False):
    model.zero_grad(set_to_none=True)
    with torch.autocast(x_a.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x_a, x_b, lam, mask_ratio=0.75, noise=noise, teacher=teacher)
    out["loss"].backward()
    terms = {k: out[k].detach().float() for k in ("loss", *IMAE.LOSS_TERMS)}
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return terms, grads


def _layouts(student):
    """(fast, faithful) copies of the same weights: batched + fused vs separate calls + explicit attention."""
    fast = copy.deepcopy(student)
    fast.batched = True
    set_fused_attention(fast, True)
    faithful = copy.deepcopy(student)
    faithful.batched = False
    set_fused_attention(faithful, False)
    return fast, faithful


@pytest.mark.parametrize("lam", [0.3, 0.8])
def test_fast_and_faithful_layouts_agree_fp32(lam):
    student, teacher, x_a, x_b, noise = _imae_setup()
    fast, faithful = _layouts(student)
    lam_t = torch.tensor(lam)
    t_teacher = copy.deepcopy(teacher)
    set_fused_attention(t_teacher, False)  # the faithful teacher also runs the explicit attention
    terms_f, grads_f = _loss_and_grads(fast, teacher, x_a, x_b, lam_t, noise)
    terms_s, grads_s = _loss_and_grads(faithful, t_teacher, x_a, x_b, lam_t, noise)
    for k in terms_f:
        assert terms_f[k].item() > 0, f"{k} is zero: the comparison would prove nothing"
        torch.testing.assert_close(terms_f[k], terms_s[k], rtol=1e-5, atol=1e-7, msg=lambda m: f"{k}: {m}")
    assert grads_f.keys() == grads_s.keys() and len(grads_f) > 10
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_s[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"grad {name}: {m}")


def test_batched_uses_one_mask_for_both_branches_and_the_teacher():
    """Each layout separately: batched == separate calls with fused attention on (isolates batching)."""
    student, teacher, x_a, x_b, noise = _imae_setup(seed=3)
    a, b = copy.deepcopy(student), copy.deepcopy(student)
    a.batched, b.batched = True, False
    ta, _ = _loss_and_grads(a, teacher, x_a, x_b, torch.tensor(0.2), noise)
    tb, _ = _loss_and_grads(b, teacher, x_a, x_b, torch.tensor(0.2), noise)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-7)


def test_fused_and_explicit_attention_agree_on_mae():
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(**ARCH)
    assert set_fused_attention(m, True) == ARCH["depth"] + ARCH["decoder_depth"]
    x, noise = torch.randn(4, 3, 16, 16), torch.rand(4, 16)
    fused = m(x, noise=noise)["loss"]
    set_fused_attention(m, False)
    explicit = m(x, noise=noise)["loss"]
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-7)


def test_set_fused_attention_refuses_a_model_without_attention():
    with pytest.raises(ValueError, match="fused_attn"):
        set_fused_attention(torch.nn.Linear(2, 2), False)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_fast_path_matches_fp32_faithful_within_bf16_tolerance(device):
    student, teacher, x_a, x_b, noise = _imae_setup(seed=1, device=device)
    fast, faithful = _layouts(student)
    lam = torch.tensor(0.35, device=device)
    terms_bf, grads_bf = _loss_and_grads(fast, teacher, x_a, x_b, lam, noise, bf16=True)
    terms_32, grads_32 = _loss_and_grads(faithful, teacher, x_a, x_b, lam, noise)
    for k in terms_bf:
        torch.testing.assert_close(terms_bf[k], terms_32[k], rtol=BF16_RTOL, atol=1e-4, msg=lambda m: f"{k}: {m}")
    # gradients: direction agrees (cosine) -- elementwise bf16 error is too uneven for a per-entry bound
    flat_bf = torch.cat([grads_bf[n].flatten() for n in sorted(grads_bf)])
    flat_32 = torch.cat([grads_32[n].flatten() for n in sorted(grads_32)])
    assert torch.nn.functional.cosine_similarity(flat_bf, flat_32, dim=0) > 0.999


# ---------------------------------------------------------------------------------------- augmentation
N_DRAWS = 4000


def _torchvision_draws(n: int, height: int, width: int, scale=(0.2, 1.0), seed: int = 0):
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(seed)
    img = torch.zeros(3, height, width)
    boxes = [RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]
    return np.array(boxes, dtype=np.float64)  # (top, left, h, w)


def _features(boxes: np.ndarray, height: int, width: int) -> dict:
    top, left, h, w = boxes.T
    return {"area": h * w / (height * width), "aspect": w / h,
            "top": (top + 0.5) / (height - h + 1), "left": (left + 0.5) / (width - w + 1)}


@pytest.mark.parametrize("hw", [(32, 32), (64, 48)])
def test_crop_boxes_follow_torchvision_distribution(hw):
    height, width = hw
    ours = rrc_params(N_DRAWS, height, width, generator=torch.Generator().manual_seed(1)).double().numpy()
    ref = _torchvision_draws(N_DRAWS, height, width, seed=2)
    assert (ours[:, 2] >= 1).all() and (ours[:, 0] + ours[:, 2] <= height).all()
    assert (ours[:, 3] >= 1).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    fo, fr = _features(ours, height, width), _features(ref, height, width)
    for k in fo:
        p = stats.ks_2samp(fo[k], fr[k]).pvalue
        assert p > 1e-3, f"{k}: KS p={p:.2g} (ours mean {fo[k].mean():.4f}, torchvision {fr[k].mean():.4f})"


def test_crop_box_test_detects_a_wrong_scale_range():
    """The KS test above has power: a 0.3-1.0 scale range (instead of 0.2-1.0) is caught."""
    ours = rrc_params(N_DRAWS, 32, 32, scale=(0.3, 1.0), generator=torch.Generator().manual_seed(1)).numpy()
    ref = _torchvision_draws(N_DRAWS, 32, 32, seed=2)
    assert stats.ks_2samp(_features(ours, 32, 32)["area"], _features(ref, 32, 32)["area"]).pvalue < 1e-6


def test_flip_rate_is_one_half_and_flips_are_applied():
    aug = BatchAugment(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), hflip=True)
    g = torch.Generator().manual_seed(5)
    # the flip draw follows the boxes in the generator's stream; replay it
    rrc_params(N_DRAWS, 16, 16, scale=aug.scale, generator=g)
    flips = (torch.rand(N_DRAWS, generator=g) < 0.5).numpy()
    assert stats.binomtest(int(flips.sum()), N_DRAWS, 0.5).pvalue > 1e-3
    imgs = (torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    out = aug(imgs, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    boxes = rrc_params(8, 16, 16, scale=aug.scale, generator=g)
    flip = torch.rand(8, generator=g) < 0.5
    assert 0 < int(flip.sum()) < 8, "pick a seed that flips some images and not others"
    plain = aug.normalize(resized_crop(imgs.float(), boxes, 16))
    expect = torch.where(flip[:, None, None, None], plain.flip(-1), plain)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_resized_crop_equals_torchvision_bilinear(device):
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    g = torch.Generator().manual_seed(0)
    n, size = 48, 32
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    known = torch.stack([xx * 8.0, yy * 8.0, ((xx // 4 + yy // 4) % 2) * 255.0])  # ramps + a checkerboard
    imgs = torch.cat([known[None], torch.rand(n - 1, 3, size, size, generator=g) * 255])
    boxes = rrc_params(n, size, size, generator=g)
    boxes[0] = torch.tensor([3.0, 5.0, 11.0, 17.0])  # a small, off-centre box on the known image
    flip = torch.rand(n, generator=g) < 0.5
    flip[0] = True
    ours = resized_crop(imgs.to(device), boxes.to(device), size, flip.to(device)).cpu()
    for k in range(n):
        t, l, h, w = (int(v) for v in boxes[k])
        ref = TF.resized_crop(imgs[k], t, l, h, w, [size, size], InterpolationMode.BILINEAR, antialias=True)
        ref = TF.hflip(ref) if flip[k] else ref
        torch.testing.assert_close(ours[k], ref, rtol=0, atol=1e-3, msg=lambda m: f"image {k}: {m}")
    # and a box that is not the whole image really crops (catches boxes ignored or swapped h/w)
    assert not torch.allclose(ours[0], torch.nn.functional.interpolate(imgs[:1], size=size)[0])


def test_resized_crop_identity_box_is_identity():
    imgs = torch.rand(2, 3, 8, 8) * 255
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2)
    torch.testing.assert_close(resized_crop(imgs, boxes, 8), imgs, rtol=0, atol=1e-3)
    torch.testing.assert_close(resized_crop(imgs, boxes, 8, torch.tensor([True, False]))[0], imgs[0].flip(-1),
                               rtol=0, atol=1e-3)
    assert math.isclose(float(resized_crop(imgs, boxes, 8).mean()), float(imgs.mean()), rel_tol=1e-5)
