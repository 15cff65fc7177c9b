"""Masked autoencoder ViT (He et al., 2022) with facebookresearch/mae's parameter names.

Parameter names and shapes follow ``MaskedAutoencoderViT`` of facebookresearch/mae (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.N.*``, ``norm``, ``decoder_embed``, ``mask_token``,
``decoder_pos_embed``, ``decoder_blocks.N.*``, ``decoder_norm``, ``decoder_pred``), so an official
checkpoint loads with ``strict=True``. The blocks are timm's, whose attention calls
``F.scaled_dot_product_attention`` (fused kernels on GPU).

Stages are named and separately callable: :meth:`patchify`, :meth:`random_masking`,
:meth:`forward_encoder`, :meth:`forward_decoder` (= :meth:`decoder_embed` + :meth:`decode_tokens`),
:meth:`forward_loss`. Masking takes explicit ``noise`` so two models can share one mask.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from .pos_embed import sincos_pos_embed_2d


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with a strided conv (``proj``, as MAE/timm)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        self.grid = img_size // patch_size
        self.num_patches = self.grid ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise ValueError(f"expected {self.img_size}x{self.img_size} images, got {tuple(x.shape[-2:])}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, L, D)


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder and a light ViT decoder.

    Args:
        img_size, patch_size, in_chans: input geometry.
        embed_dim, depth, num_heads: encoder.
        decoder_embed_dim, decoder_depth, decoder_num_heads: decoder.
        mlp_ratio: MLP width / embed width in every block.
        norm_pix_loss: regress per-patch normalised pixels.
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_pix_loss: bool = False):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim), requires_grad=False)  # fixed sin-cos
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = norm(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
             for _ in range(decoder_depth)])
        self.decoder_norm = norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans, bias=True)

        self.norm_pix_loss = norm_pix_loss
        self.in_chans = in_chans
        self.embed_dim, self.decoder_embed_dim = embed_dim, decoder_embed_dim
        self._init_weights()

    # ------------------------------------------------------------------------------------------- init
    def _init_weights(self) -> None:
        grid = self.patch_embed.grid
        self.pos_embed.data.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], grid, cls_token=True)[None])
        self.decoder_pos_embed.data.copy_(
            sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], grid, cls_token=True)[None])
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer on flattened patches
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------------- patches
    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, C, H, W) -> (N, L, p*p*C), pixel order (p, q, c) as MAE."""
        p, g, c = self.patch_embed.patch_size, self.patch_embed.grid, self.in_chans
        x = imgs.reshape(imgs.shape[0], c, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.shape[0], g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W)."""
        p, g, c = self.patch_embed.patch_size, self.patch_embed.grid, self.in_chans
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    # ------------------------------------------------------------------------------------- masking
    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Keep the ``floor(L * (1 - mask_ratio))`` tokens with the smallest noise.

        Args:
            x: (N, L, D) tokens.
            mask_ratio: fraction to drop.
            noise: (N, L) any real numbers; default U(0, 1). Pass the same noise to share a mask.
        Returns:
            x_kept (N, L_keep, D); mask (N, L) with 1 = removed; ids_restore (N, L).
        """
        n, length, d = x.shape
        keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    # ------------------------------------------------------------------------------------- encoder
    def _embed(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(imgs) + self.pos_embed[:, 1:, :]

    def _encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """imgs (N, C, H, W) -> latent (N, 1 + L_keep, D), mask (N, L), ids_restore (N, L)."""
        x, mask, ids_restore = self.random_masking(self._embed(imgs), mask_ratio, noise)
        return self._encode_tokens(x), mask, ids_restore

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Unmasked encoding in patch order: (N, 1 + L, D); token 0 is cls."""
        return self._encode_tokens(self._embed(imgs))

    # ------------------------------------------------------------------------------------- decoder
    def decode_tokens(self, h: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Decoder after ``decoder_embed``: h (N, 1 + L_keep, D_dec) -> pred (N, L, p*p*C)."""
        n, length = ids_restore.shape
        masks = self.mask_token.expand(n, length + 1 - h.shape[1], -1).to(h.dtype)
        x = torch.cat([h[:, 1:, :], masks], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, h.shape[2]))  # unshuffle
        x = torch.cat([h[:, :1, :], x], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        return self.decode_tokens(self.decoder_embed(latent), ids_restore)

    # ---------------------------------------------------------------------------------------- loss
    def target_patches(self, imgs: torch.Tensor) -> torch.Tensor:
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the REMOVED patches only. imgs (N,C,H,W); pred (N,L,p*p*C); mask (N,L)."""
        per_patch = ((pred.float() - self.target_patches(imgs).float()) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None) -> dict:
        """1. encode the visible patches 2. decode all 3. score the removed ones.

        Returns a dict: ``loss`` (what to minimise), ``loss_rec`` (the same, named), ``pred``, ``mask``.
        """
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return {"loss": loss, "loss_rec": loss.detach(), "pred": pred, "mask": mask}


def mae_from_config(model_cfg) -> MaskedAutoencoderViT:
    """Build from an :class:`imae.config.ModelConfig` (or any object with the same fields)."""
    from ..config import ModelConfig

    return MaskedAutoencoderViT(**{f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(ModelConfig)})
