"""L-BFGS for smooth convex problems, with one host synchronisation per function evaluation.

``torch.optim.LBFGS`` turns every coefficient of its two-loop recursion into a Python number (``alpha=`` of an
in-place add), so each iteration waits for the device about 2 x history times; on a GPU, a small problem (a
linear classifier on 50,000 x 192 features) is then bound by those waits, not by arithmetic, and threads do
not help because the conversions hold Python's global interpreter lock. Here the recursion stays on the
device (0-dim tensors scale the vectors), and the numbers the host needs to decide (the loss, the directional
derivative, the gradient's largest entry, the curvature pair's products) come back together, once per
function evaluation.

The step length comes from a backtracking line search with the sufficient-decrease (Armijo) condition,
starting from the unit step (L-BFGS's natural one; the first iteration starts from min(1, 1 / ||g||_1), the
same scaling torch uses) and shrinking by safeguarded quadratic interpolation. On a convex objective every
curvature pair has y's > 0 up to rounding, so the curvature (Wolfe) condition that a bracketing line search
enforces is not needed for a positive-definite update; pairs with y's <= 1e-10 are skipped as torch does.

Stopping rules, as torch's defaults: the gradient's largest entry <= ``tolerance_grad``, a step or a loss
change <= ``tolerance_change``, ``max_iter`` iterations, or a failed line search (no decrease within
``max_ls`` trials: the loss is at its floating-point floor along the direction).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Objective = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


@torch.no_grad()
def minimize(fun: Objective, x0: torch.Tensor, *, max_iter: int = 100, history: int = 20,
             tolerance_grad: float = 1e-5, tolerance_change: float = 1e-8, c1: float = 1e-4,
             max_ls: int = 25) -> tuple[torch.Tensor, dict]:
    """Minimise ``fun`` from ``x0``.

    Args:
        fun: ``x -> (loss, grad)``: a 0-dim tensor and a tensor shaped as ``x`` (a new one each call).
        x0: the starting point, a 1-D float tensor (not modified).
        max_iter: iterations (each one direction and its line search).
        history: curvature pairs kept.
        tolerance_grad, tolerance_change: stopping tolerances (see the module's docstring).
        c1: the sufficient-decrease constant.
        max_ls: function evaluations per line search at most.
    Returns:
        ``(x, info)``: the last accepted point, and {"loss", "iterations", "evaluations", "stop", "grad_max"}
        (the largest absolute gradient entry at that point: how close to the minimum the fit stopped).
    """
    if x0.dim() != 1 or not x0.is_floating_point():
        raise ValueError(f"lbfgs.minimize: x0 must be a 1-D float tensor, got {tuple(x0.shape)} {x0.dtype}")
    x = x0.clone()
    f, g = fun(x)
    dt = x.dtype  # the numbers the host reads, in the problem's precision

    loss, gmax, g1 = torch.stack([f.detach().to(dt), g.abs().max().to(dt), g.abs().sum().to(dt)]).tolist()
    evals, it, stop = 1, 0, "max_iter"
    if not math.isfinite(loss):
        raise FloatingPointError(f"lbfgs.minimize: the loss at the starting point is {loss}")
    if gmax <= tolerance_grad:
        return x, {"loss": loss, "iterations": 0, "evaluations": evals, "stop": "tolerance_grad", "grad_max": gmax}
    steps: list[torch.Tensor] = []  # s_k = x_{k+1} - x_k
    diffs: list[torch.Tensor] = []  # y_k = g_{k+1} - g_k
    rhos: list[float] = []  # 1 / (y_k . s_k)
    gamma = 1.0  # the initial inverse Hessian's scale, (y.s) / (y.y) of the newest pair
    # Losses closer than this are equal to the precision they are computed in (a mean of many rounded terms).
    noise = max(tolerance_change, 8 * torch.finfo(x.dtype).eps * abs(loss))
    while it < max_iter:
        it += 1
        # Two-loop recursion: d = -H g, every coefficient a 0-dim tensor on the device.
        d = g.neg()
        alphas = []
        for s, y, rho in zip(reversed(steps), reversed(diffs), reversed(rhos)):
            a = s.dot(d) * rho
            alphas.append(a)
            d.sub_(y * a)
        if steps:
            d.mul_(gamma)
        for s, y, rho, a in zip(steps, diffs, rhos, reversed(alphas)):
            b = y.dot(d) * rho
            d.add_(s * (a - b))
        gtd_t = g.dot(d)
        t = min(1.0, 1.0 / g1) if it == 1 else 1.0
        accepted = False
        for _ in range(max_ls):
            x_new = x.add(d, alpha=t)
            f_new, g_new = fun(x_new)
            evals += 1
            y = g_new - g
            s = x_new - x
            vals = torch.stack([f_new.detach().to(dt), gtd_t.to(dt), g_new.abs().max().to(dt), y.dot(s).to(dt),
                                y.dot(y).to(dt), s.abs().max().to(dt)]).tolist()
            loss_new, gtd, gmax_new, ys, yy, smax = vals
            if not gtd < -tolerance_change:  # not a descent direction (nan included): nothing left to gain
                stop = "tolerance_change"
                break
            if math.isfinite(loss_new) and loss_new <= loss + c1 * t * gtd:
                accepted = True
                break
            if smax <= tolerance_change or abs(loss_new - loss) <= noise:
                # The step is negligible, or the loss cannot tell the points apart (its rounding): converged.
                stop = "tolerance_change"
                break
            # Minimiser of the quadratic through f(0), f'(0) and f(t), kept within [0.1 t, 0.5 t].
            curv = loss_new - loss - gtd * t
            t_q = -gtd * t * t / (2.0 * curv) if math.isfinite(loss_new) and curv > 0 else 0.5 * t
            t = min(max(t_q, 0.1 * t), 0.5 * t)
        else:
            stop = "line_search"
        if not accepted:
            if stop == "max_iter":
                stop = "line_search"
            break
        loss_prev = loss
        x, g, loss, gmax = x_new, g_new, loss_new, gmax_new
        if ys > 1e-10:
            if len(steps) == history:
                steps.pop(0), diffs.pop(0), rhos.pop(0)
            steps.append(s)
            diffs.append(y)
            rhos.append(1.0 / ys)
            gamma = ys / yy
        if gmax_new <= tolerance_grad:
            stop = "tolerance_grad"
            break
        if smax <= tolerance_change or abs(loss - loss_prev) < tolerance_change:
            stop = "tolerance_change"
            break
    return x, {"loss": loss, "iterations": it, "evaluations": evals, "stop": stop, "grad_max": gmax}


__all__ = ["minimize"]
