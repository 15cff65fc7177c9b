"""Fixed 2-D sine-cosine position embeddings (as in MAE / MoCo v3)."""

from __future__ import annotations

import torch


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos (M,) -> (M, dim): half sines, half cosines over geometric frequencies."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = pos.double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = False) -> torch.Tensor:
    """(grid*grid [+1], dim) float32; the first half encodes the column, the second the row (MAE's layout);
    a leading all-zero row for the cls token when ``cls_token``."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, cols.reshape(-1)), _sincos_1d(dim // 2, rows.reshape(-1))], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
