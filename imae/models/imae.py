"""i-MAE: an MAE that reconstructs BOTH images of a mixture through a linear splitter.

The model wraps a :class:`MaskedAutoencoderViT` (same parameter names under ``mae.``) and adds two linear
heads on the shared encoder output, ``h_sub = W1 z + b1`` and ``h_dom = W2 z + b2`` (D -> D_dec), both
initialised from the MAE's ``decoder_embed``. The ONE MAE decoder runs on each head: branch 0 always
predicts the subordinate image (smaller mixing weight), branch 1 the dominant one. A frozen MAE teacher
supplies distillation targets ``t = T.decoder_embed(T.encoder(x))`` under the same mask.

Loss = w_rec_sub MSE_masked(pred_sub, x_sub) + w_rec_dom MSE_masked(pred_dom, x_dom)
     + w_distill_sub MSE(h_sub, t_sub) + w_distill_dom MSE(h_dom, t_dom)   (distillation over cls + visible).

``teacher_input='clean'`` (our default) gives the teacher the clean x_sub and x_dom, which is what the loss
pairing implies; ``'mixed'`` reproduces the released code, which feeds it the mixture twice.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..mixing import mix, route
from .mae import MaskedAutoencoderViT


@dataclass(frozen=True)
class LossWeights:
    """The weights of i-MAE's four loss terms: the config's ``imae.w_*`` fields, whose defaults live there only
    (:class:`imae.config.IMAEConfig`)."""

    rec_sub: float
    rec_dom: float
    distill_sub: float
    distill_dom: float

    @classmethod
    def from_config(cls, imae_cfg=None) -> "LossWeights":
        """From an :class:`imae.config.IMAEConfig` (``w_rec_sub``, ...); None: the config's defaults."""
        if imae_cfg is None:
            from ..config import IMAEConfig  # the defaults' one place (imported late: config sits above models)

            imae_cfg = IMAEConfig()
        return cls(*(float(getattr(imae_cfg, f"w_{k}")) for k in cls.__dataclass_fields__))

    @classmethod
    def coerce(cls, weights) -> "LossWeights":
        """A LossWeights, None (the config's defaults) or a dict of the config's names (``{"w_distill_sub": 0.0}``,
        the others at their defaults)."""
        if isinstance(weights, cls):
            return weights
        if weights is None:
            return cls.from_config()
        unknown = set(weights) - {f"w_{k}" for k in cls.__dataclass_fields__}
        if unknown:
            known = sorted(f"w_{k}" for k in cls.__dataclass_fields__)
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; known: {known}")
        return replace(cls.from_config(), **{k[len("w_"):]: float(v) for k, v in weights.items()})

    def of(self, term: str) -> float:
        """The weight of loss term ``loss_<name>``."""
        return getattr(self, term[len("loss_"):])

    @property
    def distills(self) -> bool:
        return self.distill_sub > 0 or self.distill_dom > 0

    def __iter__(self):
        return iter(astuple(self))


class IMAE(nn.Module):
    """i-MAE student.

    Args:
        mae: the MAE to wrap (typically initialised from the teacher).
        weights: a :class:`LossWeights` (or a dict of its config names ``w_rec_sub``, ...; default all 1).
        teacher_input: ``clean`` or ``mixed`` (see module docstring).
        batched: run both decoder branches (and both teacher passes) as one batch; False reproduces the
            released code's separate calls (same numbers, slower).
    """

    LOSS_TERMS = ("loss_rec_sub", "loss_rec_dom", "loss_distill_sub", "loss_distill_dom")

    def __init__(self, mae: MaskedAutoencoderViT, *, weights: LossWeights | dict | None = None,
                 teacher_input: str = "clean",
                 batched: bool = True):
        super().__init__()
        if teacher_input not in ("clean", "mixed"):
            raise ValueError(f"teacher_input={teacher_input!r}; choose clean or mixed")
        self.mae = mae
        d, d_dec = mae.embed_dim, mae.decoder_embed_dim
        self.splitter_sub = nn.Linear(d, d_dec)
        self.splitter_dom = nn.Linear(d, d_dec)
        self.init_splitter_from_decoder_embed()
        # The splitter replaces decoder_embed on the student's path; keep it (strict MAE loading) but frozen.
        mae.decoder_embed.requires_grad_(False)
        self.weights = LossWeights.coerce(weights)
        self.teacher_input, self.batched = teacher_input, batched

    @torch.no_grad()
    def init_splitter_from_decoder_embed(self) -> None:
        for head in (self.splitter_sub, self.splitter_dom):
            head.weight.copy_(self.mae.decoder_embed.weight)
            head.bias.copy_(self.mae.decoder_embed.bias)

    def split(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latent (N, T, D) -> (h_sub, h_dom), each (N, T, D_dec)."""
        return self.splitter_sub(latent), self.splitter_dom(latent)

    def decode_both(self, h_sub, h_dom, ids_restore):
        """The shared decoder on both branches -> (pred_sub, pred_dom), each (N, L, p*p*C)."""
        if self.batched:
            pred = self.mae.decode_tokens(torch.cat([h_sub, h_dom]), torch.cat([ids_restore, ids_restore]))
            return pred.chunk(2)
        return self.mae.decode_tokens(h_sub, ids_restore), self.mae.decode_tokens(h_dom, ids_restore)

    @torch.no_grad()
    def teacher_targets(self, teacher: MaskedAutoencoderViT, x_sub, x_dom, x_mix, mask_ratio: float, noise):
        """Distillation targets (t_sub, t_dom) under the student's mask, teacher in eval mode."""
        if self.teacher_input == "mixed":  # the released code: the mixture, twice
            t, _, _ = teacher.forward_encoder(x_mix, mask_ratio, noise)
            t = teacher.decoder_embed(t)
            return t, t
        if self.batched:
            t, _, _ = teacher.forward_encoder(torch.cat([x_sub, x_dom]), mask_ratio, torch.cat([noise, noise]))
            return teacher.decoder_embed(t).chunk(2)
        t_sub, _, _ = teacher.forward_encoder(x_sub, mask_ratio, noise)
        t_dom, _, _ = teacher.forward_encoder(x_dom, mask_ratio, noise)
        return teacher.decoder_embed(t_sub), teacher.decoder_embed(t_dom)

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor, lam, *, mask_ratio: float = 0.75,
                noise: torch.Tensor | None = None, teacher: MaskedAutoencoderViT | None = None) -> dict:
        """1. mix 2. route sub/dom 3. encode the visible patches of the mixture 4. split 5. decode both
        6. score each branch on its own image (+ distil toward the teacher).

        Args:
            x_a, x_b: (N, C, H, W) normalised images.
            lam: weight of x_a, a scalar or (N,) tensor; the smaller of lam and 1 - lam is alpha.
            mask_ratio, noise: masking (noise (N, L); shared with the teacher).
            teacher: frozen MAE for the distillation terms (None: those terms are 0).
        Returns:
            ``loss`` and the four named terms, plus ``pred_sub``, ``pred_dom``, ``mask``, ``alpha``.
        """
        x_mix = mix(x_a, x_b, lam)
        x_sub, x_dom, alpha = route(x_a, x_b, lam)
        if noise is None:
            noise = torch.rand(x_a.shape[0], self.mae.num_patches, device=x_a.device)
        latent, mask, ids_restore = self.mae.forward_encoder(x_mix, mask_ratio, noise)
        h_sub, h_dom = self.split(latent)
        pred_sub, pred_dom = self.decode_both(h_sub, h_dom, ids_restore)
        w = self.weights
        terms = {"loss_rec_sub": self.mae.forward_loss(x_sub, pred_sub, mask),
                 "loss_rec_dom": self.mae.forward_loss(x_dom, pred_dom, mask)}
        zero = terms["loss_rec_sub"].new_zeros(())
        if teacher is not None and w.distills:
            t_sub, t_dom = self.teacher_targets(teacher, x_sub, x_dom, x_mix, mask_ratio, noise)
            terms["loss_distill_sub"] = F.mse_loss(h_sub.float(), t_sub.float())
            terms["loss_distill_dom"] = F.mse_loss(h_dom.float(), t_dom.float())
        else:
            terms["loss_distill_sub"] = terms["loss_distill_dom"] = zero
        loss = sum(w.of(k) * v for k, v in terms.items())
        out = {"loss": loss, **{k: v.detach() for k, v in terms.items()}}
        out.update(pred_sub=pred_sub, pred_dom=pred_dom, mask=mask, alpha=alpha)
        return out


def freeze_teacher(teacher: MaskedAutoencoderViT) -> MaskedAutoencoderViT:
    """Eval mode, no gradients: the teacher is a fixed function."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def imae_from_config(cfg, mae: MaskedAutoencoderViT) -> IMAE:
    """The i-MAE of a :class:`imae.config.RunConfig` around ``mae`` (loss weights, teacher input, batching):
    the one builder training, evaluation and the stored models use."""
    return IMAE(mae, weights=LossWeights.from_config(cfg.imae), teacher_input=cfg.imae.teacher_input,
                batched=cfg.train.batched)
