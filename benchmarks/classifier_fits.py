"""The degree of semantics' classifier fits, timed three ways in ONE run: the optimiser before, ours, ours threaded.

One degree-of-semantics evaluation makes 42 linear-classifier fits (2 pools x (2 targets x 10 alphas + the
clean probe)), each choosing its L2 penalty from a grid of 9 and refitting: on an H200, campaign window 1
spent 97-104 s of a model's 105 s there. This times the same shape of work on synthetic features:

* ``torch-lbfgs``: the fits one after the other with ``torch.optim.LBFGS`` (strong-Wolfe line search), as
  window 1 ran them: the faithful baseline;
* ``ours``: one after the other with :func:`imae.metrics.lbfgs.minimize` (one host synchronisation per
  function evaluation);
* ``ours-threaded``: :func:`imae.metrics.probes.linear_classifiers`' default (8 fits at a time on CUDA, each
  in its own thread and stream; on a CPU the default is sequential, so this path is forced with ``--parallel``).

Each path reports its wall time and the largest difference of its test accuracies to the baseline's (the
optimisers stop at the same losses to float32's precision; the penalty a noisy validation split picks can
differ, which moves an accuracy by the noise of that split).

    python benchmarks/classifier_fits.py --device cuda --out fits.json          # GPU: the semantics shape
    python benchmarks/classifier_fits.py --device cpu --fits 6 --rows 2000      # a quick CPU check
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imae.metrics import probes  # noqa: E402


def torch_lbfgs_fit(x, y, w, b, weight_decay: float, max_iter: int) -> dict:
    """The optimiser before :mod:`imae.metrics.lbfgs`: torch's L-BFGS on the same objective and gradient."""
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-5,
                            tolerance_change=1e-8, line_search_fn="strong_wolfe")
    rows = torch.arange(x.shape[0], device=x.device)

    def closure():  # the same objective and closed-form gradient as the fit's
        loss, w.grad, b.grad = probes._objective(x, y, rows, w, b, weight_decay)
        return loss

    with probes._threads_for(x):  # as the fit did: one CPU thread for a small problem
        opt.step(closure)
    w.requires_grad_(False)
    b.requires_grad_(False)
    st = opt.state[opt._params[0]]
    with torch.no_grad():  # the fit's record: where it stopped, and how far from the minimum
        _, gw, gb = probes._objective(x, y, rows, w, b, weight_decay)
        grad_max = float(torch.cat([gw.reshape(-1), gb]).abs().max())
    n_iter = st.get("n_iter", 0)
    return {"iterations": n_iter, "evaluations": st.get("func_evals", 0),
            "stop": "max_iter" if n_iter >= max_iter else "converged", "grad_max": grad_max}


def problems(n_fits: int, rows: int, test_rows: int, dim: int, classes: int, device: str, seed: int = 0) -> list[dict]:
    """``n_fits`` classification problems of semantics' shape: class signal that fades from fit to fit (as the
    subordinate weight alpha falls), features already on ``device`` (as the evaluation's cache holds them)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_fits):
        scale = 0.02 + 0.3 * (i % 10) / 9
        centers = torch.randn(classes, dim, generator=g) * scale
        y, yt = torch.randint(0, classes, (rows,), generator=g), torch.randint(0, classes, (test_rows,), generator=g)
        x = centers[y] + torch.randn(rows, dim, generator=g)
        xt = centers[yt] + torch.randn(test_rows, dim, generator=g)
        out.append({"x_train": x.to(device), "y_train": y.to(device), "x_test": xt.to(device),
                    "y_test": yt.to(device), "num_classes": classes})
    return out


def timed(fn) -> tuple[float, list[dict]]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fits", type=int, default=42, help="fits per path (semantics: 42)")
    ap.add_argument("--rows", type=int, default=8000, help="training rows per fit")
    ap.add_argument("--test-rows", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=192, help="feature width (ViT-Tiny: 192)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=probes.MAX_PARALLEL, help="fits at a time, threaded path")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    probs = problems(args.fits, args.rows, args.test_rows, args.dim, args.classes, args.device)
    common = {"device": args.device}
    paths = {}
    original = probes._lbfgs_fit
    try:
        probes._lbfgs_fit = torch_lbfgs_fit
        paths["torch-lbfgs"] = timed(lambda: probes.linear_classifiers(probs, parallel=1, **common))
    finally:
        probes._lbfgs_fit = original
    paths["ours"] = timed(lambda: probes.linear_classifiers(probs, parallel=1, **common))
    paths["ours-threaded"] = timed(lambda: probes.linear_classifiers(probs, parallel=args.parallel, **common))
    base_s, base = paths["torch-lbfgs"]
    rows = {}
    for name, (wall, res) in paths.items():
        rows[name] = {"wall_s": round(wall, 3), "s_per_fit": round(wall / args.fits, 4),
                      "speedup": round(base_s / wall, 2),
                      "max_accuracy_diff": round(max(abs(a["accuracy"] - b["accuracy"]) for a, b in zip(res, base)), 4),
                      "same_penalty": sum(a["weight_decay"] == b["weight_decay"] for a, b in zip(res, base))}
        print(f"{name:14s} {wall:8.2f} s  {wall / args.fits:7.3f} s/fit  x{base_s / wall:5.2f}  "
              f"max |acc - baseline| {rows[name]['max_accuracy_diff']:.4f}  "
              f"same penalty {rows[name]['same_penalty']}/{args.fits}")
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    result = {"device": device, "torch": torch.__version__, "args": vars(args), "paths": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
