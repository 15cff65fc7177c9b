"""Models: the MAE ViT (facebookresearch/mae parameter names) and i-MAE, which wraps it."""

from .attention import set_fused_attention
from .imae import IMAE, LossWeights, freeze_teacher, imae_from_config
from .mae import MaskedAutoencoderViT, mae_from_config

__all__ = ["IMAE", "LossWeights", "MaskedAutoencoderViT", "freeze_teacher", "imae_from_config", "mae_from_config",
           "set_fused_attention"]
