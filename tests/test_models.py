"""Models: shapes per preset, masking, sub/dom routing, masked-only loss, teacher, official MAE keys."""

from __future__ import annotations

import argparse

import pytest
import torch

from imae.checkpoint import load_checkpoint, load_mae_weights, mae_state_dict, save_checkpoint
from imae.config import PRESETS, build_config
from imae.data.pairs import route
from imae.errors import CheckpointError
from imae.models import IMAE, MaskedAutoencoderViT, freeze_teacher, mae_from_config


def small_mae(**kw) -> MaskedAutoencoderViT:
    args = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)
    args.update(kw)
    torch.manual_seed(0)
    return MaskedAutoencoderViT(**args)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_shapes_for_every_preset(preset):
    cfg = build_config(preset, method="mae")
    m = cfg.model
    mae = mae_from_config(m)
    n, length = 2, (m.img_size // m.patch_size) ** 2
    keep = int(length * (1 - cfg.train.mask_ratio))
    x = torch.randn(n, 3, m.img_size, m.img_size)
    with torch.no_grad():
        latent, mask, ids = mae.forward_encoder(x, cfg.train.mask_ratio)
        assert latent.shape == (n, 1 + keep, m.embed_dim)
        assert mask.shape == ids.shape == (n, length)
        out = mae(x, cfg.train.mask_ratio)
        assert out["pred"].shape == (n, length, m.patch_size ** 2 * 3)
        assert mae.forward_features(x).shape == (n, 1 + length, m.embed_dim)
        student = IMAE(mae_from_config(m))
        y = student(x, torch.randn_like(x), 0.3, mask_ratio=cfg.train.mask_ratio, teacher=freeze_teacher(mae))
    assert y["pred_sub"].shape == y["pred_dom"].shape == (n, length, m.patch_size ** 2 * 3)
    assert set(IMAE.LOSS_TERMS) <= set(y) and torch.isfinite(y["loss"])


def test_patchify_roundtrip():
    mae = small_mae()
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(mae.unpatchify(mae.patchify(x)), x)
    # patch (0, 1) holds pixels rows 0-3, cols 4-7, in (row, col, channel) order
    assert torch.equal(mae.patchify(x)[0, 1].view(4, 4, 3), x[0, :, 0:4, 4:8].permute(1, 2, 0))


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_masking_keeps_exactly_floor_count(ratio):
    mae = small_mae()
    tokens = torch.randn(4, 16, 32)
    kept, mask, ids_restore = mae.random_masking(tokens, ratio)
    keep = int(16 * (1 - ratio))
    assert kept.shape == (4, keep, 32)
    assert torch.all(mask.sum(1) == 16 - keep)
    # the kept tokens are exactly the unmasked ones
    for i in range(4):
        visible = tokens[i][mask[i] == 0]
        assert torch.equal(torch.sort(kept[i], dim=0).values, torch.sort(visible, dim=0).values)
    assert torch.equal(torch.sort(ids_restore, 1).values, torch.arange(16).expand(4, 16))


def test_explicit_noise_shares_the_mask_between_models():
    a, b = small_mae(), small_mae(embed_dim=64)
    x = torch.randn(3, 3, 16, 16)
    noise = torch.rand(3, 16)
    _, mask_a, ids_a = a.forward_encoder(x, 0.75, noise)
    _, mask_b, ids_b = b.forward_encoder(x * 2, 0.75, noise)
    assert torch.equal(mask_a, mask_b) and torch.equal(ids_a, ids_b)
    # the smallest-noise tokens are the kept ones
    assert torch.equal(mask_a == 0, noise <= noise.sort(1).values[:, 3:4])


@pytest.mark.parametrize("lam", [0.2, 0.45, 0.55, 0.9])
def test_routing_picks_the_smaller_weight_as_subordinate(lam):
    x_a, x_b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    x_sub, x_dom, alpha = route(x_a, x_b, lam)
    expect_sub = x_a if lam < 0.5 else x_b
    assert torch.equal(x_sub, expect_sub) and torch.equal(x_dom, x_b if lam < 0.5 else x_a)
    assert float(alpha) == pytest.approx(min(lam, 1 - lam))


def test_routing_per_sample_lambda():
    x_a, x_b = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    x_sub, x_dom, alpha = route(x_a, x_b, torch.tensor([0.3, 0.8]))
    assert x_sub[0].sum() == 0 and x_sub[1].sum() == 4
    assert torch.allclose(alpha, torch.tensor([0.3, 0.2]))


def test_imae_is_symmetric_in_which_image_is_called_a():
    """(x_a, x_b, lam) and (x_b, x_a, 1 - lam) are the same mixture with the same sub/dom: same losses."""
    torch.manual_seed(0)
    student, teacher = IMAE(small_mae()), freeze_teacher(small_mae())
    x_a, x_b, noise = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    one = student(x_a, x_b, 0.3, noise=noise, teacher=teacher)
    two = student(x_b, x_a, 0.7, noise=noise, teacher=teacher)
    for k in ("loss", *IMAE.LOSS_TERMS):
        assert torch.allclose(one[k], two[k], atol=1e-6), k


def test_subordinate_branch_is_scored_against_the_subordinate_image():
    torch.manual_seed(0)
    student = IMAE(small_mae())
    x_a, x_b, noise = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    out = student(x_a, x_b, 0.2, noise=noise)  # a is the subordinate
    expected = student.mae.forward_loss(x_a, out["pred_sub"], out["mask"])
    assert torch.allclose(out["loss_rec_sub"], expected)
    assert not torch.allclose(out["loss_rec_sub"], student.mae.forward_loss(x_b, out["pred_sub"], out["mask"]))


def test_reconstruction_loss_only_sees_masked_patches():
    mae = small_mae()
    x = torch.randn(2, 3, 16, 16)
    noise = torch.rand(2, 16)
    out = mae(x, 0.75, noise)
    mask = out["mask"]
    patches = mae.patchify(x)
    visible_changed = mae.unpatchify(patches + 5.0 * (1 - mask).unsqueeze(-1))
    masked_changed = mae.unpatchify(patches + 5.0 * mask.unsqueeze(-1))
    base = mae.forward_loss(x, out["pred"], mask)
    assert torch.allclose(mae.forward_loss(visible_changed, out["pred"], mask), base)
    assert not torch.allclose(mae.forward_loss(masked_changed, out["pred"], mask), base)


def test_norm_pix_target_is_per_patch_standardised():
    mae = small_mae(norm_pix_loss=True)
    t = mae.target_patches(torch.randn(2, 3, 16, 16) * 3 + 1)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(2, 16), atol=1e-3)


def test_teacher_is_frozen_and_gets_no_gradient():
    torch.manual_seed(0)
    teacher = freeze_teacher(small_mae())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = IMAE(small_mae())
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        out = student(torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), 0.3, teacher=teacher)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert out["loss_distill_sub"] > 0


def test_splitter_starts_as_decoder_embed_and_distillation_is_zero_for_a_copy():
    """With the student a copy of the teacher, the dominant target at lambda=0 is the student's own
    embedding of the same tokens under the same mask: the distillation term is exactly 0."""
    mae = small_mae()
    teacher = freeze_teacher(small_mae())
    teacher.load_state_dict(mae.state_dict())
    student = IMAE(mae)
    assert torch.equal(student.splitter_sub.weight, mae.decoder_embed.weight)
    assert not mae.decoder_embed.weight.requires_grad  # replaced by the splitter on the student's path
    x_a, x_b, noise = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    out = student(x_a, x_b, 0.0, noise=noise, teacher=teacher)  # x_mix = x_b = x_dom
    assert float(out["loss_distill_dom"]) < 1e-10
    assert float(out["loss_distill_sub"]) > 1e-4


def test_teacher_input_mixed_uses_the_mixture_for_both_targets():
    torch.manual_seed(0)
    teacher = freeze_teacher(small_mae())
    student = IMAE(small_mae(), teacher_input="mixed")
    x_a, x_b, noise = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    t_sub, t_dom = student.teacher_targets(teacher, x_a, x_b, 0.3 * x_a + 0.7 * x_b, 0.75, noise)
    assert torch.equal(t_sub, t_dom)


# ----------------------------------------------------------------------------- official MAE checkpoints
def official_mae_vit_base_keys() -> dict[str, tuple]:
    """The state_dict of facebookresearch/mae ``mae_vit_base_patch16`` (mae_pretrain_vit_base_full.pth),
    written out from its architecture: ViT-B/16 encoder, 512-d x 8 decoder, 197 tokens."""
    d, dd, hid, dhid = 768, 512, 3072, 2048
    keys = {"cls_token": (1, 1, d), "pos_embed": (1, 197, d), "patch_embed.proj.weight": (d, 3, 16, 16),
            "patch_embed.proj.bias": (d,), "norm.weight": (d,), "norm.bias": (d,), "mask_token": (1, 1, dd),
            "decoder_pos_embed": (1, 197, dd), "decoder_embed.weight": (dd, d), "decoder_embed.bias": (dd,),
            "decoder_norm.weight": (dd,), "decoder_norm.bias": (dd,), "decoder_pred.weight": (768, dd),
            "decoder_pred.bias": (768,)}
    for prefix, n, w, h in (("blocks", 12, d, hid), ("decoder_blocks", 8, dd, dhid)):
        for i in range(n):
            b = f"{prefix}.{i}."
            keys.update({b + "norm1.weight": (w,), b + "norm1.bias": (w,), b + "attn.qkv.weight": (3 * w, w),
                         b + "attn.qkv.bias": (3 * w,), b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,),
                         b + "norm2.weight": (w,), b + "norm2.bias": (w,), b + "mlp.fc1.weight": (h, w),
                         b + "mlp.fc1.bias": (h,), b + "mlp.fc2.weight": (w, h), b + "mlp.fc2.bias": (w,)})
    return keys


@pytest.fixture(scope="module")
def vit_base():
    return mae_from_config(build_config("imagenet").model)


def test_imagenet_preset_has_exactly_the_official_mae_keys(vit_base):
    expected = official_mae_vit_base_keys()
    ours = {k: tuple(v.shape) for k, v in vit_base.state_dict().items()}
    assert len(expected) == 254
    assert ours == expected


def test_official_style_checkpoint_loads_strictly(vit_base, tmp_path):
    """An official checkpoint is {'model', 'optimizer', 'epoch', 'scaler', 'args': argparse.Namespace}."""
    sd = {k: torch.randn(s) for k, s in official_mae_vit_base_keys().items()}
    path = tmp_path / "mae_pretrain_vit_base_full.pth"
    save_checkpoint({"model": sd, "epoch": 799, "scaler": {},
                     "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75)}, path)
    ckpt = load_checkpoint(path)
    load_mae_weights(vit_base, mae_state_dict(ckpt), source=str(path))
    assert torch.equal(vit_base.state_dict()["blocks.3.attn.qkv.weight"], sd["blocks.3.attn.qkv.weight"])
    result = vit_base.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_encoder_only_official_checkpoint_is_refused_with_a_hint(vit_base):
    sd = {k: torch.zeros(s) for k, s in official_mae_vit_base_keys().items() if not k.startswith(("decoder", "mask"))}
    with pytest.raises(CheckpointError, match="encoder-only checkpoint"):
        load_mae_weights(vit_base, sd, source="mae_pretrain_vit_base.pth")
    load_mae_weights(vit_base, sd, source="x", allow_missing=("decoder", "mask_token"))  # encoder use is fine


def test_loss_weights_take_their_defaults_from_the_config_only(monkeypatch):
    from imae.config import IMAEConfig
    from imae.models import LossWeights

    assert LossWeights.coerce(None) == LossWeights.from_config(IMAEConfig())
    # a changed default in the config is the weights' default: no second copy to drift
    monkeypatch.setattr(IMAEConfig, "__init__", lambda self: None)
    for k, v in {"w_rec_sub": 0.5, "w_rec_dom": 2.0, "w_distill_sub": 0.25, "w_distill_dom": 3.0}.items():
        monkeypatch.setattr(IMAEConfig, k, v, raising=False)
    assert LossWeights.coerce(None) == LossWeights(0.5, 2.0, 0.25, 3.0)
    assert LossWeights.coerce({"w_distill_sub": 0.0}) == LossWeights(0.5, 2.0, 0.0, 3.0)
