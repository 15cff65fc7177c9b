"""Frozen-feature classifiers: a linear probe (also used by the degree of semantics) and kNN.

* :func:`linear_classifier`: multinomial logistic regression on cached features, standardised with the
  training set's mean and std, trained full-batch with L-BFGS (:mod:`imae.metrics.lbfgs`). The L2 weight decay is chosen on a seeded
  validation split of the training features from a log grid (walked from strong to weak, each fit warm-
  starting the next; where the best penalty sits at an edge of the grid the grid grows past that edge until
  validation accuracy peaks inside it), then the classifier is refitted on all training features, with an
  iteration budget that lets it converge (the result reports how it stopped). With ``groups`` (the image
  ids of each row; (N, 2) for mixture pairs) the validation split is grouped by image, as ridge's
  (:func:`imae.metrics.ridge.group_split`): no image on both sides. On 50k x 192 features it
  takes seconds on a CPU and runs on a GPU when the features are there.
  (MAE's probe is BN + linear head trained by SGD for 90 epochs; a well-regularised convex fit on the same
  frozen features gives the linear read-out without a schedule to tune, and standardising is the BN.)
* :func:`linear_classifiers`: several independent :func:`linear_classifier` fits, concurrently on a CUDA device
  (one thread and one stream per fit in flight), one after the other on the CPU; the results are those of
  the sequential calls.
* :func:`knn_classifier`: the DINO / InstDisc weighted kNN: cosine similarity to the k nearest training
  features, each voting for its class with weight exp(sim / T); k = 20, T = 0.07.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .features import POOLS, EvalData, clean_features
from .lbfgs import minimize
from .ridge import group_split

WEIGHT_DECAYS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6)  # strong -> weak (warm starts)
GRID_STEP, GRID_GROW = 10.0, 4  # a best penalty at an edge of the grid extends it by this factor, up to 4 times
# Which optimiser fits the classifiers: the campaign's planner predicts a fitting evaluation's time only from
# evaluations fitted by the same one (torch's L-BFGS, before this, waited ~40 times per iteration on a GPU).
OPTIMIZER = "imae.metrics.lbfgs-1"
MAX_PARALLEL = 8  # fits in flight at once on a CUDA device (linear_classifiers' default there)


def _as_device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


@contextlib.contextmanager
def _threads_for(x: torch.Tensor):
    """One CPU thread for small problems: each of L-BFGS's hundreds of tiny ops would otherwise pay a
    thread-pool synchronisation, which costs milliseconds when another process shares the cores."""
    small = x.device.type == "cpu" and x.numel() < 2 ** 20
    old = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(old)


@torch.no_grad()
def _objective(x, y, rows, w, b, weight_decay: float, grad_w=None, grad_b=None):
    """Mean cross-entropy of ``x @ w + b`` + weight_decay/2 ||w||², and its gradient in closed form
    ((softmax - onehot) / n): ``(loss, grad_w, grad_b)``, the gradients written into ``grad_w`` / ``grad_b``
    where given. ``rows`` is ``arange(len(x))`` (made once by the caller)."""
    logits = torch.addmm(b, x, w)
    lse = logits.logsumexp(dim=1)
    loss = (lse - logits[rows, y]).mean() + 0.5 * weight_decay * (w * w).sum()
    p = (logits - lse[:, None]).exp_()
    p[rows, y] -= 1.0
    p /= x.shape[0]
    grad_w = torch.addmm(w, x.T, p, alpha=1.0, beta=weight_decay, out=grad_w)
    grad_b = torch.sum(p, dim=0, out=grad_b)
    return loss, grad_w, grad_b


def _lbfgs_fit(x, y, w, b, weight_decay: float, max_iter: int) -> dict:
    """Minimise mean cross-entropy + weight_decay/2 ||W||² in place (full batch), from the current w, b.

    L-BFGS (:func:`imae.metrics.lbfgs.minimize`: history 20, the tolerances of torch's defaults, one host
    synchronisation per function evaluation) on :func:`_objective`, whose gradient is written in closed form:
    on small problems autograd's per-call overhead, not arithmetic, would dominate the hundreds of evaluations.
    Returns the optimiser's record (loss, iterations, evaluations, why it stopped).
    """
    rows = torch.arange(x.shape[0], device=x.device)
    d, c = w.shape
    n_w = d * c

    def fun(theta):
        grad = torch.empty_like(theta)
        loss, _, _ = _objective(x, y, rows, theta[:n_w].view(d, c), theta[n_w:], weight_decay,
                                grad_w=grad[:n_w].view(d, c), grad_b=grad[n_w:])
        return loss, grad

    with _threads_for(x), torch.no_grad():
        theta, info = minimize(fun, torch.cat([w.reshape(-1), b]), max_iter=max_iter, history=20,
                               tolerance_grad=1e-5, tolerance_change=1e-8)
        w.copy_(theta[:n_w].view(d, c))
        b.copy_(theta[n_w:])
    return info


@torch.no_grad()
def _accuracy(x, y, w, b) -> float:
    return float(((x @ w + b).argmax(dim=1) == y).float().mean())


def linear_classifier(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
                      num_classes: int | None = None, weight_decays: Sequence[float] = WEIGHT_DECAYS,
                      val_fraction: float = 0.2, max_iter: int = 100, final_max_iter: int | None = None,
                      seed: int = 0, device=None, groups=None, return_probs: bool = False,
                      return_weights: bool = False) -> dict:
    """Multinomial logistic regression on frozen features; weight decay chosen on a validation split.

    Args:
        x_train, y_train: (N, D) features and (N,) labels to fit.
        x_test, y_test: held-out features and labels to score.
        num_classes: default max label + 1.
        weight_decays: L2 penalties tried (coefficient of ||W||²/2 added to the MEAN cross-entropy).
        val_fraction: share of the training rows held out to choose the penalty.
        max_iter: L-BFGS iterations per fit of the penalty search.
        final_max_iter: L-BFGS iterations of the final fit on all training rows (default 3 * max_iter); the
            result's ``fit`` says how it stopped and its final largest gradient entry.
        seed: the validation split's seed.
        device: where to fit (default: the CPU).
        groups: optional image ids per training row, (N,) or (N, k) (mixture pairs: (N, 2)); the penalty's
            validation split is then grouped by image (rows mixing validation and fitting images are left out
            of the penalty choice, not of the final fit).
        return_probs: also return ``probs``, the test rows' class probabilities (N_test, C) float32 numpy.
        return_weights: also return ``weights``, the fitted (W (D, C), b (C,)) on STANDARDISED features (the
            training rows' mean and std), e.g. to start a fine-tune's head from the probe.
    Returns:
        ``accuracy`` (test, in [0, 1]), ``train_accuracy``, ``weight_decay`` (chosen), ``val_accuracy``
        ({penalty: accuracy}, strongest first, the grown grid included), ``grid_edge`` (None when the chosen
        penalty lies inside the grid; ``weak`` / ``strong`` when it is still at an edge after the grid grew
        :data:`GRID_GROW` steps), ``fit`` (the final fit's ``iterations``, ``stop`` and ``grad_max``),
        ``n_train``, ``n_test``, ``n_val`` (validation rows), and ``correct``: (N_test,)
        bool numpy, whether each test row was classified right (for resampling; not JSON).
    """
    dev = _as_device(device)
    x_train, x_test = x_train.float().to(dev), x_test.float().to(dev)
    y_train, y_test = y_train.long().to(dev), y_test.long().to(dev)
    n = x_train.shape[0]
    c = num_classes or int(max(y_train.max(), y_test.max())) + 1
    val, fit = group_split(n, val_fraction, seed, groups)
    if not weight_decays or len(val) < 1 or len(fit) < 2:
        grouped = " grouped by image" if groups is not None else ""
        raise ConfigError(f"linear_classifier: {n} training samples with val_fraction={val_fraction}{grouped} "
                          f"({len(val)} validation, {len(fit)} fitting rows) and weight_decays="
                          f"{list(weight_decays)} cannot choose a penalty; give more samples")
    mean, std = x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    val, fit = val.to(dev), fit.to(dev)
    w = torch.zeros(x_train.shape[1], c, device=dev)
    b = torch.zeros(c, device=dev)
    x_fit, y_fit, x_val, y_val = x_train[fit], y_train[fit], x_train[val], y_train[val]  # gathered once
    states: dict[float, tuple] = {}
    hits: dict[float, torch.Tensor] = {}

    def try_penalties(penalties) -> None:
        for wd in penalties:  # each fit warm-starts from the current w, b
            _lbfgs_fit(x_fit, y_fit, w, b, wd, max_iter)
            with torch.no_grad():  # kept on the device: one host sync per batch of penalties
                hits[wd] = ((x_val @ w + b).argmax(dim=1) == y_val).float().mean()
            states[wd] = (w.detach().clone(), b.detach().clone())

    def best_penalty() -> float:
        val = dict(zip(hits, torch.stack(list(hits.values())).tolist()))  # float32 -> float exactly
        # Ties go to the strongest penalty: the simplest classifier that does as well.
        return max(val, key=lambda k: (val[k], k)), val

    try_penalties(sorted(weight_decays, reverse=True))
    best, val_acc = best_penalty()
    # The grid grows until validation accuracy peaks inside it: a best penalty at an edge that beats every other
    # one means the peak may lie beyond it (a probe cut short); a tie with a penalty inside is a plateau, not a
    # cut. Each step is a factor GRID_STEP, at most GRID_GROW steps.
    def strict_edge(best, val) -> bool:  # the edge beats every other penalty: accuracy still rising there
        return best in (min(val), max(val)) and all(v < val[best] for k, v in val.items() if k != best)

    for _ in range(GRID_GROW):
        lo, hi = min(hits), max(hits)
        if not strict_edge(best, val_acc):
            break
        if best == lo:  # weakest: continue the warm-started path to weaker penalties
            w.copy_(states[lo][0]), b.copy_(states[lo][1])
            try_penalties([lo / GRID_STEP])
        elif best == hi:  # strongest: a stronger penalty from the strongest one's solution
            w.copy_(states[hi][0]), b.copy_(states[hi][1])
            try_penalties([hi * GRID_STEP])
        best, val_acc = best_penalty()
    edge = None if not strict_edge(best, val_acc) else "weak" if best == min(hits) else "strong"
    with torch.no_grad():
        w.copy_(states[best][0])
        b.copy_(states[best][1])
    final = _lbfgs_fit(x_train, y_train, w, b, best, final_max_iter or 3 * max_iter)
    with torch.no_grad():
        logits = x_test @ w + b
        correct = logits.argmax(dim=1) == y_test
    out = {"accuracy": float(correct.float().mean()) if len(correct) else float("nan"),
           "train_accuracy": _accuracy(x_train, y_train, w, b), "weight_decay": best,
           "val_accuracy": {str(k): v for k, v in sorted(val_acc.items(), reverse=True)}, "grid_edge": edge,
           "fit": {k: final[k] for k in ("iterations", "stop", "grad_max")}, "n_train": n,
           "n_test": int(x_test.shape[0]), "n_val": int(len(val)), "correct": correct.cpu().numpy()}
    if return_probs:
        out["probs"] = logits.softmax(dim=1).float().cpu().numpy()
    if return_weights:
        out["weights"] = (w.detach().clone(), b.detach().clone())
    return out


def linear_classifiers(problems: Sequence[dict], *, parallel: int | None = None, **common) -> list[dict]:
    """Several independent :func:`linear_classifier` fits: ``[linear_classifier(**common, **p) for p in problems]``
    (a problem's keys win over ``common``'s), with the same results in the same order.

    Each fit is some hundred function evaluations of a dozen small kernels, and L-BFGS reads a few numbers back
    to the host once per evaluation (:mod:`imae.metrics.lbfgs`): on a GPU a small fit is bound by launch and
    synchronisation latency, not by arithmetic, and one fit at a time leaves the device idle. So on CUDA up to
    ``parallel`` fits run at once, each in a worker thread with its own stream: one fit's host syncs wait
    only for its own kernels, and while a thread waits in ``tolist()`` of a tensor or in a kernel launch,
    torch has released the GIL and the other threads go on. Every fit still runs the same kernels in the same
    order on the same data, so it returns what the sequential call returns; only the wall time changes.

    Args:
        problems: keyword arguments of :func:`linear_classifier`, one dict per fit.
        parallel: fits in flight at once. None (default): :data:`MAX_PARALLEL` when a fit runs on a CUDA device,
            else 1: one after the other, exactly the sequential calls (on the CPU, worker threads would only
            compete with torch's own intra-op threads). An integer is honoured on any device (on the CPU the
            threads are meant for tests of this path); 1 is sequential.
        common: keyword arguments shared by every problem.
    Returns:
        One :func:`linear_classifier` result per problem, in order. A failing problem raises its error (the first
        failing one in order; fits not yet started are cancelled).
    """
    calls = [{**common, **p} for p in problems]
    if parallel is None:
        parallel = MAX_PARALLEL if any(_as_device(kw.get("device")).type == "cuda" for kw in calls) else 1
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"linear_classifiers: parallel={parallel!r} must be a positive integer or None")
    workers = min(parallel, len(calls))
    if workers <= 1:
        return [linear_classifier(**kw) for kw in calls]
    return _threaded(calls, workers)


def _threaded(calls: list[dict], workers: int) -> list[dict]:
    """:func:`linear_classifiers`' concurrent path: a thread pool, one CUDA stream per worker and device."""
    devices = [_as_device(kw.get("device")) for kw in calls]
    # "cuda" means the caller's current GPU; a worker thread's current GPU is its own (GPU 0), so name it.
    devices = [torch.device("cuda", torch.cuda.current_device()) if d.type == "cuda" and d.index is None else d
               for d in devices]
    # Inputs the caller made on a GPU were queued on its current stream: each worker stream waits for that.
    ready = {}
    for d in set(devices):
        if d.type == "cuda":
            ready[d] = torch.cuda.Event()
            ready[d].record(torch.cuda.current_stream(d))
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()  # thread-local state, as in the caller
    local = threading.local()

    def run(kw: dict, dev: torch.device) -> dict:
        torch.set_num_threads(threads)  # per thread under OpenMP: a new thread starts from the default
        with torch.set_grad_enabled(grad):
            if dev.type != "cuda":
                return linear_classifier(**kw)
            streams = local.__dict__.setdefault("streams", {})
            if dev not in streams:
                streams[dev] = torch.cuda.Stream(device=dev)
            stream = streams[dev]
            stream.wait_event(ready[dev])
            try:
                with torch.cuda.device(dev), torch.cuda.stream(stream):
                    return linear_classifier(**kw)
            finally:
                # The results are on the host already; this also makes sure no kernel of this stream still
                # reads the caller's tensors when they are freed and their memory reused on its stream.
                stream.synchronize()

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="linear-classifier") as pool:
            futures = [pool.submit(run, kw, dev) for kw, dev in zip(calls, devices)]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        torch.set_num_threads(threads)  # where the thread count is process-wide, the workers' changes undone


def _probe_calls(train: dict, test: dict, data: EvalData, pools: Sequence[str], **options) -> list[dict]:
    """:func:`linear_probe`'s fits as :func:`linear_classifiers` problems, one per pool."""
    return [dict(x_train=train[p], y_train=data.train.labels, x_test=test[p], y_test=data.test.labels,
                 num_classes=data.train.num_classes, **options) for p in pools]


@torch.no_grad()
def knn_classifier(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
                   k: int = 20, temperature: float = 0.07, num_classes: int | None = None, batch_size: int = 1024,
                   device=None) -> dict:
    """Temperature-weighted cosine kNN (DINO / InstDisc protocol).

    Args:
        x_train, y_train: the memory bank (N, D) and its labels.
        x_test, y_test: queries and their labels.
        k: neighbours (capped at N).
        temperature: votes weigh exp(cosine / temperature).
        num_classes: default max label + 1.
        batch_size: queries per similarity block.
        device: where to compute (default: the CPU).
    Returns:
        ``accuracy`` (top-1, in [0, 1]), ``k``, ``temperature``, ``n_train``, ``n_test``, and ``correct``:
        (N_test,) bool numpy, whether each query was classified right (for resampling; not JSON).
    """
    if k < 1 or temperature <= 0:
        raise ConfigError(f"knn: k={k} must be >= 1 and temperature={temperature} > 0 (defaults 20 and 0.07)")
    dev = _as_device(device)
    bank = F.normalize(x_train.float().to(dev), dim=1)
    labels = y_train.long().to(dev)
    c = num_classes or int(max(y_train.max(), y_test.max())) + 1
    kk = min(k, bank.shape[0])
    correct = []
    for start in range(0, x_test.shape[0], batch_size):
        q = F.normalize(x_test[start:start + batch_size].float().to(dev), dim=1)
        sim, idx = (q @ bank.T).topk(kk, dim=1)
        votes = torch.zeros(q.shape[0], c, device=dev)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        correct.append((votes.argmax(dim=1) == y_test[start:start + batch_size].to(dev)).cpu())
    correct = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
    return {"accuracy": int(correct.sum()) / max(int(x_test.shape[0]), 1), "k": kk, "temperature": temperature,
            "n_train": int(bank.shape[0]), "n_test": int(x_test.shape[0]), "correct": correct.numpy()}


def clean_split_features(encoder, data: EvalData, *, batch_size: int = 256, device="cpu",
                         pools: Sequence[str] = POOLS) -> tuple[dict, dict]:
    """Pooled features of the whole train and test splits (clean, un-augmented)."""
    kw = dict(batch_size=batch_size, device=device, pools=pools)
    return clean_features(encoder, data.train, **kw), clean_features(encoder, data.test, **kw)


def linear_probe(encoder, data: EvalData, *, pools: Sequence[str] = POOLS, batch_size: int = 256, device="cpu",
                 seed: int = 0, weight_decays: Sequence[float] = WEIGHT_DECAYS, max_iter: int = 100,
                 features: tuple[dict, dict] | None = None) -> dict:
    """Linear-probe accuracy of a frozen encoder on clean images, per pooling: {pool: linear_classifier(...)}.

    ``features`` = (train, test) from :func:`clean_split_features` skips the extraction. The pools' fits run
    through :func:`linear_classifiers` (concurrently on CUDA).
    """
    train, test = features or clean_split_features(encoder, data, batch_size=batch_size, device=device, pools=pools)
    calls = _probe_calls(train, test, data, pools, weight_decays=weight_decays, max_iter=max_iter, seed=seed,
                         device=device)
    return dict(zip(pools, linear_classifiers(calls)))


def knn(encoder, data: EvalData, *, pools: Sequence[str] = POOLS, k: int = 20, temperature: float = 0.07,
        batch_size: int = 256, device="cpu", features: tuple[dict, dict] | None = None) -> dict:
    """kNN accuracy of a frozen encoder on clean images (train split = memory bank), per pooling."""
    train, test = features or clean_split_features(encoder, data, batch_size=batch_size, device=device, pools=pools)
    return {p: knn_classifier(train[p], data.train.labels, test[p], data.test.labels, k=k, temperature=temperature,
                              num_classes=data.train.num_classes, device=device) for p in pools}
