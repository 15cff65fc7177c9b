"""Closed-form ridge regression with the penalty chosen on a validation split, and R².

R² here is the VARIANCE-WEIGHTED coefficient of determination over all output dimensions,

    R² = 1 - sum_{i,j} (y_ij - ŷ_ij)² / sum_{i,j} (y_ij - ȳ_j)²,

with ȳ_j the mean of output j over the SCORED samples (sklearn's ``r2_score(...,
multioutput='variance_weighted')``). Dimensions with more variance weigh more; 1 means the targets are
perfectly linearly recoverable, 0 means no better than predicting their mean, and it can go negative.

The ridge fit centres X and Y on the fitting data, takes ONE eigendecomposition of the centred training
part's Gram matrix, ``XᵀX = V diag(e) Vᵀ``, and gets the validation predictions of every penalty λ from it at
the cost of a small matrix product each: ``W(λ) = V diag(1 / (e + λ)) Vᵀ XᵀY``. The grid is relative to the data's scale (λ = g ·
mean eigenvalue of XᵀX), so the same grid fits features of any norm. The chosen λ is then refitted on
train + validation (a second, D x D, eigendecomposition). Computation is float64 on the CPU: it is small next to feature
extraction and the penalties span nine decades.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError

RIDGE_GRID = tuple(float(10.0 ** e) for e in np.arange(-6.0, 3.01, 0.5))  # relative penalties, 19 values


def r2_score(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    """Variance-weighted R² (see the module docstring). y_true, y_pred: (N, M) or (N,)."""
    y_true, y_pred = _2d(y_true).double(), _2d(y_pred).double()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"r2_score: shapes differ, {tuple(y_true.shape)} vs {tuple(y_pred.shape)}")
    sst = ((y_true - y_true.mean(dim=0)) ** 2).sum()
    sse = ((y_true - y_pred) ** 2).sum()
    if sst <= 0:
        raise ValueError("r2_score: the targets have zero variance, R² is undefined")
    return float(1.0 - sse / sst)


def _2d(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x[:, None] if x.dim() == 1 else x


@dataclass
class RidgeFit:
    """A fitted ridge map ``ŷ = (x - x_mean) @ coef + y_mean``.

    Attributes:
        coef: (D, M) float64; x_mean (D,), y_mean (M,).
        lam: the chosen absolute penalty; lam_rel: the same relative to the data scale (a value of ``grid``).
        grid: the relative penalties tried; val_r2: validation R² of each.
    """

    coef: torch.Tensor
    x_mean: torch.Tensor
    y_mean: torch.Tensor
    lam: float
    lam_rel: float
    grid: tuple
    val_r2: list

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (_2d(x).double().cpu() - self.x_mean) @ self.coef + self.y_mean

    def score(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return r2_score(y, self.predict(x))


def _eig_solver(x: torch.Tensor, y: torch.Tensor):
    """Centred pieces of the ridge solution: (x_mean, y_mean, V, e, Vᵀ X_cᵀ Y_c) with X_cᵀX_c = V diag(e) Vᵀ."""
    x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
    xc = x - x_mean
    e, v = torch.linalg.eigh(xc.T @ xc)
    return x_mean, y_mean, v, e.clamp_min(0.0), v.T @ (xc.T @ (y - y_mean))


def fit_ridge(x: torch.Tensor, y: torch.Tensor, *, grid=RIDGE_GRID, val_fraction: float = 0.2,
              seed: int = 0) -> RidgeFit:
    """Ridge regression y ≈ x W + b with λ chosen by validation R² over a relative log grid.

    Args:
        x: (N, D) inputs; y: (N, M) (or (N,)) targets.
        grid: relative penalties; absolute λ = g · ||X_c||_F² / D (the mean eigenvalue of X_cᵀX_c).
        val_fraction: share of the N rows held out (seeded permutation) to choose λ.
        seed: the validation split's seed.
    Returns:
        a :class:`RidgeFit` refitted on all N rows with the chosen λ.
    """
    x, y = _2d(x).double().cpu(), _2d(y).double().cpu()
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"fit_ridge: x has {n} rows but y has {y.shape[0]}")
    n_val = int(round(n * val_fraction))
    if not 0 < val_fraction < 1 or n_val < 2 or n - n_val < 2:
        raise ConfigError(f"fit_ridge: {n} samples with val_fraction={val_fraction} leave no usable validation "
                          f"split; give more pairs (n_pairs) or a val_fraction in (0, 1)")
    grid = tuple(float(g) for g in grid)
    if not grid or any(not np.isfinite(g) or g <= 0 for g in grid):
        raise ConfigError(f"ridge grid {grid} must hold finite positive penalties")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, tr = perm[:n_val], perm[n_val:]
    x_mean, y_mean, v, e, vty = _eig_solver(x[tr], y[tr])
    scale = float(e.sum()) / x.shape[1] or 1.0  # all-constant inputs: any λ fits the mean
    xv = (x[val] - x_mean) @ v
    val_r2 = [r2_score(y[val], (xv / (e + g * scale)) @ vty + y_mean) for g in grid]
    # Ties (e.g. constant inputs) go to the largest penalty: the simplest map that does as well.
    best = max(range(len(grid)), key=lambda i: (round(val_r2[i], 12), grid[i]))
    x_mean, y_mean, v, e, vty = _eig_solver(x, y)
    lam = grid[best] * (float(e.sum()) / x.shape[1] or 1.0)
    coef = v @ (vty / (e + lam)[:, None])
    return RidgeFit(coef, x_mean, y_mean, lam, grid[best], grid, val_r2)


def ridge_r2(x_fit, y_fit, x_test, y_test, *, grid=RIDGE_GRID, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Fit on (x_fit, y_fit), score held-out R² on (x_test, y_test); returns {r2, lambda, lambda_rel}."""
    fit = fit_ridge(x_fit, y_fit, grid=grid, val_fraction=val_fraction, seed=seed)
    return {"r2": fit.score(x_test, y_test), "lambda": fit.lam, "lambda_rel": fit.lam_rel}
