"""Switch between timm's fused attention (``F.scaled_dot_product_attention``) and its explicit path.

timm decides once, at construction, whether an ``Attention`` module calls SDPA (``fused_attn``); the
released MAE/i-MAE engines predate SDPA and compute ``softmax(q k^T / sqrt(d)) v`` explicitly. Toggling the
flag on a built model lets the benchmark time the released layout and the tests compare both on the same
weights (they compute the same function; only kernels and rounding differ).
"""

from __future__ import annotations

import torch.nn as nn


def set_fused_attention(model: nn.Module, enabled: bool) -> int:
    """Set ``fused_attn`` on every attention module inside ``model``; returns how many were changed.

    Raises ValueError when the model has no such module (a silent no-op would make a baseline lie).
    """
    n = 0
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = bool(enabled)
            n += 1
    if n == 0:
        raise ValueError(f"{type(model).__name__} has no attention module with a `fused_attn` flag")
    return n
