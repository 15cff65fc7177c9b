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

**Validation split grouped by image** (``groups``, shared with :func:`imae.metrics.probes.linear_classifier`
through :func:`group_split`). Rows that share an image must not sit on both sides of the penalty's validation
split, or the validation score rewards memorising that image. ``groups`` gives every row the ids of the
images it is made of: (N,) for one image per row, (N, k) for k images per row (a mixture pair: (N, 2) =
(subordinate, dominant) image indices). A seeded share of the distinct ids is drawn as VALIDATION images;
a row is a validation row when ALL its images are validation images, a fitting row when NONE is, and a row
mixing both kinds is left out of the penalty choice (it still enters the final refit on all rows). The
share of ids is ``val_fraction ** (1 / k)``, so that about ``val_fraction`` of the rows validate (k = 2,
val_fraction 0.2: 45 % of the images, ~20 % of the pairs validate, ~31 % fit, ~49 % are left out). A
mixture pair shares images with other pairs (each image is an anchor once and may be a partner elsewhere),
so its connected components are one giant component; choosing images, not components, is what keeps both
parts non-empty.

Per-row pieces for resampling (:func:`row_sse`, :func:`row_sst`): the sum over output dimensions of the
squared error of each row, and of its squared deviation from the scored rows' mean target; summed over
rows, ``1 - sum(sse) / sum(sst)`` is the R² above.
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


def row_sse(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Per-row squared error summed over the outputs: (N,) float64."""
    return ((_2d(y_true).double() - _2d(y_pred).double()) ** 2).sum(dim=1)


def row_sst(y_true: torch.Tensor) -> torch.Tensor:
    """Per-row squared deviation from the mean target of these rows, summed over the outputs: (N,) float64."""
    y = _2d(y_true).double()
    return ((y - y.mean(dim=0)) ** 2).sum(dim=1)


def group_split(n: int, val_fraction: float, seed: int, groups=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (validation, fitting) of a seeded validation split (see the module docstring).

    Args:
        n: number of rows.
        val_fraction: share of the rows to validate on (about; exact without ``groups``).
        seed: the split's seed.
        groups: None (rows split one by one: a seeded permutation, the first ``round(n * val_fraction)``
            validate), or (N,) / (N, k) integer ids of the images each row is made of; then no id is on
            both sides and rows mixing validation and fitting ids are in neither.
    """
    g = torch.Generator().manual_seed(seed)
    if groups is None:
        perm = torch.randperm(n, generator=g)
        n_val = int(round(n * val_fraction))
        return perm[:n_val], perm[n_val:]
    ids = torch.as_tensor(np.asarray(groups) if not isinstance(groups, torch.Tensor) else groups).long().cpu()
    ids = ids[:, None] if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.shape[0] != n:
        raise ValueError(f"groups must hold one id (N,) or k ids (N, k) per row for {n} rows, got shape "
                         f"{tuple(ids.shape)}")
    uniq, inv = torch.unique(ids, return_inverse=True)
    share = val_fraction ** (1.0 / ids.shape[1]) if 0 < val_fraction < 1 else val_fraction
    is_val = torch.zeros(len(uniq), dtype=torch.bool)
    is_val[torch.randperm(len(uniq), generator=g)[:int(round(len(uniq) * share))]] = True
    row_val = is_val[inv]
    return torch.nonzero(row_val.all(dim=1)).squeeze(1), torch.nonzero(~row_val.any(dim=1)).squeeze(1)


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
              seed: int = 0, groups=None) -> RidgeFit:
    """Ridge regression y ≈ x W + b with λ chosen by validation R² over a relative log grid.

    Args:
        x: (N, D) inputs; y: (N, M) (or (N,)) targets.
        grid: relative penalties; absolute λ = g · ||X_c||_F² / D (the mean eigenvalue of X_cᵀX_c).
        val_fraction: share of the N rows held out (seeded permutation) to choose λ.
        seed: the validation split's seed.
        groups: optional image ids per row, (N,) or (N, k): the validation split is then grouped by image
            (:func:`group_split`; no image on both sides, mixed rows left out of the penalty choice).
    Returns:
        a :class:`RidgeFit` refitted on all N rows with the chosen λ.
    """
    x, y = _2d(x).double().cpu(), _2d(y).double().cpu()
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"fit_ridge: x has {n} rows but y has {y.shape[0]}")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"fit_ridge: val_fraction={val_fraction} must lie in (0, 1), e.g. 0.2")
    val, tr = group_split(n, val_fraction, seed, groups)
    if len(val) < 2 or len(tr) < 2:
        grouped = " grouped by image" if groups is not None else ""
        raise ConfigError(f"fit_ridge: {n} samples with val_fraction={val_fraction} leave no usable validation "
                          f"split{grouped} ({len(val)} validation, {len(tr)} fitting rows); give more pairs "
                          f"(n_pairs) or another val_fraction in (0, 1)")
    grid = tuple(float(g) for g in grid)
    if not grid or any(not np.isfinite(g) or g <= 0 for g in grid):
        raise ConfigError(f"ridge grid {grid} must hold finite positive penalties")
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

