"""Models: the MAE ViT (facebookresearch/mae parameter names) and i-MAE, which wraps it."""

from .attention import set_fused_attention
from .imae import IMAE, freeze_teacher
from .mae import MaskedAutoencoderViT, mae_from_config

__all__ = ["IMAE", "MaskedAutoencoderViT", "freeze_teacher", "mae_from_config", "set_fused_attention"]
