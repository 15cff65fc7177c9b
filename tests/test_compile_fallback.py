"""train.compile: a compiler that fails on the first step leaves an eager run, not a crash."""

from __future__ import annotations

import pytest
import torch

from imae.devices import CompiledOrEager


def _broken_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler found")


def test_a_failing_compiler_falls_back_to_eager_with_a_warning():
    f = CompiledOrEager(lambda x: x * 2 + 1, backend=_broken_backend)
    x = torch.arange(4.0)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
        assert torch.equal(f(x), x * 2 + 1)
    assert "no C++ compiler" in f.fallback_reason
    assert torch.equal(f(x + 1), (x + 1) * 2 + 1)  # later calls go straight to eager


def test_errors_after_a_compiled_call_are_raised_not_hidden():
    def g(x):
        if x.shape[0] > 4:
            raise ValueError("the model's own error")
        return x + 1

    f = CompiledOrEager(g, backend="eager")  # a backend that always works
    assert torch.equal(f(torch.zeros(2)), torch.ones(2)) and f.fallback_reason is None
    with pytest.raises(ValueError, match="own error"):
        f(torch.zeros(8))


def test_an_imae_trains_under_compile_with_the_losses_of_eager(toy_root, mae_run, tmp_path):
    """train.compile=true trains the i-MAE step compiled: same fingerprint, same first-step losses (to float noise)."""
    import json

    from imae.runs import read_run_config
    from imae.train import pretrain
    from tests.conftest import micro

    losses = {}
    for flag in (False, True):
        cfg = micro(toy_root, method="imae", **{"imae.teacher": str(mae_run), "train.epochs": 1,
                                                 "train.compile": flag})
        run = pretrain(cfg, tmp_path / str(flag), progress=False)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        losses[flag] = [r["loss"] for r in rows if "loss" in r]
        losses[f"fp{flag}"] = read_run_config(run)["fingerprint"]
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-4)
    assert all(map(lambda v: v == v, losses[True]))  # finite all along
    assert losses["fpTrue"] == losses["fpFalse"]
