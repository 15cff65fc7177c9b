"""Mixing two images and naming their roles: pure tensor functions shared by the data path, the models and
the metrics (so that none of them imports another for it).

``x_mix = lam * x_a + (1 - lam) * x_b``; the image with the smaller weight alpha = min(lam, 1 - lam) is the
*subordinate*, the other the *dominant*.
"""

from __future__ import annotations

import torch


def mix(x_a: torch.Tensor, x_b: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """lam * x_a + (1 - lam) * x_b with lam a scalar or a per-sample (B,) tensor."""
    lam = _per_sample(lam, x_a)
    return lam * x_a + (1 - lam) * x_b


def route(x_a: torch.Tensor, x_b: torch.Tensor, lam: torch.Tensor | float):
    """(x_sub, x_dom, alpha): the subordinate is the image with the smaller weight. A tie (lambda = 0.5) makes
    x_a dominant (the released code's argmin would make it subordinate; at a tie the two are interchangeable)."""
    lam_t = _per_sample(lam, x_a)
    a_is_sub = lam_t < 0.5
    x_sub = torch.where(a_is_sub, x_a, x_b)
    x_dom = torch.where(a_is_sub, x_b, x_a)
    lam_flat = torch.as_tensor(lam, device=x_a.device, dtype=x_a.dtype)
    return x_sub, x_dom, torch.minimum(lam_flat, 1 - lam_flat)


def _per_sample(lam, x: torch.Tensor) -> torch.Tensor:
    lam = torch.as_tensor(lam, device=x.device, dtype=x.dtype)
    return lam.reshape(-1, *([1] * (x.dim() - 1))) if lam.dim() == 1 else lam
