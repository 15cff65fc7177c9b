"""imae.metrics.lbfgs.minimize: the optimiser of every linear classifier (probe, degree of semantics)."""

from __future__ import annotations

import pytest
import torch

from imae.metrics.lbfgs import minimize


def quadratic(n: int = 50, cond: float = 100.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)) @ q.T
    b = torch.randn(n, generator=g, dtype=torch.float64)

    def fun(x):
        return 0.5 * x @ a @ x - b @ x, a @ x - b

    return fun, torch.linalg.solve(a, b)


def softmax_problem(n=3000, d=20, c=5, seed=0, wd=1e-3):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * 0.6
    y = torch.randint(0, c, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    rows = torch.arange(n)

    def parts(theta):
        w, b = theta[: d * c].view(d, c), theta[d * c:]
        logits = x @ w + b
        return (logits.logsumexp(1) - logits[rows, y]).mean() + 0.5 * wd * (w * w).sum()

    def fun(theta):
        t = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = parts(t)
            (grad,) = torch.autograd.grad(loss, t)
        return loss.detach(), grad

    return fun, parts, d * c + c


def test_quadratic_reaches_the_minimiser():
    fun, xstar = quadratic()
    x, info = minimize(fun, torch.zeros_like(xstar), max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14)
    assert info["stop"] in ("tolerance_grad", "tolerance_change"), info  # the loss stops changing in float64 first
    assert torch.allclose(x, xstar, atol=1e-6)
    # L-BFGS, not gradient descent (condition number 100: that would need thousands); torch's strong-Wolfe
    # search, near-exact on a quadratic, needs 80 here; unit steps need more on a quadratic, fewer on our fits.
    assert info["iterations"] < 250


def test_matches_torch_lbfgs_on_a_softmax_regression():
    """Same objective, same tolerances: the two optimisers end at the same loss (to float32's precision)."""
    fun, parts, k = softmax_problem()
    x, info = minimize(fun, torch.zeros(k), max_iter=100)
    ref = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([ref], lr=1.0, max_iter=100, history_size=20, tolerance_grad=1e-5,
                            tolerance_change=1e-8, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = parts(ref)
        loss.backward()
        return loss

    opt.step(closure)
    mine, theirs = float(parts(x)), float(parts(ref.detach()))
    assert info["loss"] == pytest.approx(mine, rel=1e-6)  # the loss it reports is the point's
    assert mine == pytest.approx(theirs, rel=2e-6, abs=1e-6)
    assert info["evaluations"] <= 3 * info["iterations"] + 1


def test_warm_start_at_the_optimum_stops_at_once():
    fun, _, k = softmax_problem()
    x, _ = minimize(fun, torch.zeros(k), max_iter=100)
    x2, info = minimize(fun, x, max_iter=100)
    assert info["iterations"] <= 2 and torch.allclose(x2, x, atol=1e-4)
    zero = lambda t: (t.sum() * 0, torch.zeros_like(t))  # noqa: E731
    x3, info = minimize(zero, torch.ones(3))
    assert info == {"loss": 0.0, "iterations": 0, "evaluations": 1, "stop": "tolerance_grad", "grad_max": 0.0}
    assert torch.equal(x3, torch.ones(3))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="1-D float"):
        minimize(lambda t: (t.sum(), t), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="1-D float"):
        minimize(lambda t: (t.sum(), t), torch.zeros(2, dtype=torch.long))
    with pytest.raises(FloatingPointError, match="starting point"):
        minimize(lambda t: (t.sum() * float("nan"), t), torch.ones(2))


def test_a_step_into_overflow_is_shrunk_not_taken():
    """A loss that is not finite at the unit step (exp overflow) makes the line search shrink the step."""

    def fun(x):
        loss = torch.exp(x).sum() - 2 * x.sum()  # minimum at log 2; exp overflows at 89 in float32
        return loss, torch.exp(x) - 2

    x, info = minimize(fun, torch.full((4,), -200.0), max_iter=200)
    assert torch.isfinite(x).all() and torch.allclose(x, torch.full((4,), 0.6931), atol=1e-3), (x, info)
