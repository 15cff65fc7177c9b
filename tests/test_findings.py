"""The comparison glue (per-item metrics across seeds and arms) and the Findings table's verdicts."""

import json

import numpy as np
import pytest

from imae.companion import comparison as cmp
from imae.companion import findings, stats


def _sep_result(rng, n=400, gain=0.0, n_alphas=3):
    sst = rng.uniform(0.5, 1.5, n)
    sse = sst[None, :] * (0.7 - gain) * rng.uniform(0.8, 1.2, (n_alphas, n))
    return {"what": "separability", "items": {"mean/sub/sse": sse, "mean/sub/sst": sst,
                                              "mean/sub/sse_const": sst * 1.001}}


def test_paired_differences_across_arms_and_seeds_find_a_real_gain():
    rng = np.random.default_rng(0)
    res = {"MAE": [_sep_result(np.random.default_rng(s)) for s in range(3)],
           "i-MAE": [_sep_result(np.random.default_rng(s), gain=0.1) for s in range(3)],
           "untrained": [_sep_result(np.random.default_rng(s), gain=-0.2) for s in range(3)]}
    est = cmp.estimates(res, cmp.ls("sub"))
    assert set(est) == {"MAE", "i-MAE", "untrained"} and est["MAE"].mean.shape == (3,)
    assert np.allclose(est["MAE"].mean, 0.3, atol=0.02)
    d = cmp.differences(res, cmp.ls("sub"))
    assert set(d) == {"i-MAE − MAE", "MAE − untrained"}  # no "MAE continued" arm: that pair is skipped
    assert np.all(d["i-MAE − MAE"].lo > 0)
    scalar = stats.estimate([cmp.at_alpha(cmp.ls("sub"), 1)(r) for r in res["MAE"]])
    assert np.ndim(scalar.mean) == 0
    const = cmp.estimates({"c": res["MAE"]}, cmp.ls_const("sub"))["c"]
    assert np.all(np.abs(const.mean) < 0.01)
    wide = cmp.wide(cmp.frame(est, index=[0.1, 0.3, 0.5]))
    assert list(wide.columns) == ["MAE", "i-MAE", "untrained"] and "[" in wide.iloc[0, 0]
    del rng


def test_a_result_without_items_names_the_fix_and_is_not_silently_dropped():
    with pytest.raises(cmp.StaleResult, match="rerun the evaluation"):
        cmp.ls("sub")({"what": "separability"})
    with pytest.raises(cmp.StaleResult):
        cmp.estimates({"MAE": [{"what": "separability"}]}, cmp.ls("sub"))


def test_results_on_different_pairs_are_not_paired():
    rng = np.random.default_rng(0)
    a, b = _sep_result(rng), _sep_result(rng)
    a["items"]["pairs_a"], b["items"]["pairs_a"] = np.arange(400), np.arange(400)[::-1]
    with pytest.raises(ValueError, match="different test items"):
        cmp.differences({"i-MAE": [a], "MAE": [b]}, cmp.ls("sub"))


def test_ls_over_the_ceiling_is_resampled_as_one_ratio():
    rng = np.random.default_rng(5)
    r = _sep_result(rng)
    sst = r["items"]["mean/sub/sst"]
    r["items"]["mean/clean/sse"], r["items"]["mean/clean/sst"] = 0.5 * sst, sst  # ceiling R² = 0.5
    est = cmp.estimates({"MAE": [r]}, cmp.ls_ratio("sub"))["MAE"]
    raw = cmp.estimates({"MAE": [r]}, cmp.ls("sub"))["MAE"]
    assert np.allclose(est.mean, raw.mean / 0.5, rtol=1e-6)
    assert np.all(est.lo < est.mean) and np.all(est.mean < est.hi)


def _ev(main, gate=(0.05, 0.03, 0.07), equal=None, seeds=3, metric="accuracy", **kw):
    from imae.companion.verdict import Evidence, Interval
    return Evidence(metric=metric, main=Interval(*main), gates={"MAE − untrained": Interval(*gate)}, n_seeds=seeds,
                    equal_compute=None if equal is None else Interval(*equal), **kw).as_dict()


def _write(tmp_path, name, claims, preset="small", sub=None, **rec):
    folder = tmp_path / (sub or preset)
    folder.mkdir(exist_ok=True)
    rec = {"notebook": name, "preset": preset, "seeds": [0, 1, 2], "claims": claims, "runs": {
        "MAE (seed 0)": {"method": "mae", "dataset": "cifar10", "train_images": "all", "epochs": 10, "hardware": "CPU"},
        "i-MAE (seed 0)": {"method": "imae", "dataset": "cifar10", "train_images": "all", "epochs": 4}}, **rec}
    (folder / f"{name}.json").write_text(json.dumps(rec))


def test_findings_read_each_chapters_claims_and_judge_them_by_the_rule(tmp_path):
    _write(tmp_path, "classification", {"probe": _ev((0.02, 0.01, 0.03), equal=(0.02, 0.01, 0.03)),
                                        "finetune": _ev((0.02, 0.01, 0.03), gate=(-0.01, -0.02, 0.0))})
    _write(tmp_path, "separability", {"ls": _ev((-0.04, -0.06, -0.02), metric="r2", equal=(0.0, -0.01, 0.01))})
    t = findings.findings(tmp_path).set_index("claim")["verdict"]
    claims = {c.key: c.claim for c in findings.CLAIMS}
    assert t[claims["probe"]] == "supported"
    assert t[claims["finetune"]] == "not measurable at this scale"  # fine-tuned MAE does not beat scratch
    assert t[claims["ls"]] == "contradicted"
    assert t[claims["sampling"]] == "not measured"
    answers = findings.answer_table(tmp_path).set_index("claim")
    assert answers.loc["Linear probe", "CPU edition"].startswith("**supported** (+2.0 [+1.0, +3.0] pts)")
    assert answers.loc["Linear probe", "paper scale"] == "not measured"


def test_the_largest_scale_wins_when_results_land(tmp_path):
    _write(tmp_path, "classification", {"probe": _ev((0.0, -0.01, 0.01))}, preset="tiny")
    _write(tmp_path, "classification", {"probe": _ev((-0.03, -0.05, -0.01))}, preset="small")
    row = findings.findings(tmp_path).set_index("claim").loc[findings.CLAIMS[4].claim]
    assert row["verdict"] == "contradicted"
    assert findings.cpu_evidence(tmp_path)[1] == "small"


def test_records_without_claims_are_not_judged(tmp_path):
    # a chapter record of an older version (no claims section) is not read as evidence
    (tmp_path / "classification.json").write_text(json.dumps({"notebook": "classification", "preset": "small"}))
    assert findings.cpu_evidence(tmp_path) == ({}, None)
    assert set(findings.answer_table(tmp_path)["CPU edition"]) == {"not measured"}
    assert findings.paper_scale_evidence(tmp_path) is None
