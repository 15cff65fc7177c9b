"""The comparison glue (per-item metrics across seeds and arms) and the Findings table's verdicts."""

import json

import numpy as np
import pytest

from imae import comparison as cmp
from imae import findings, stats


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


def _d(mean, lo, hi):
    return {"mean": mean, "lo": lo, "hi": hi, "n_seeds": 3, "n_items": 100}


def _write(tmp_path, name, rec, preset="small", sub=None):
    folder = tmp_path / sub if sub else tmp_path
    folder.mkdir(exist_ok=True)
    rec = {"notebook": name, "preset": preset, "seeds": [0, 1, 2], "runs": {
        "MAE (seed 0)": {"method": "mae", "dataset": "cifar10", "train_images": "all", "epochs": 10, "hardware": "CPU"},
        "i-MAE (seed 0)": {"method": "imae", "dataset": "cifar10", "train_images": "all", "epochs": 4}}, **rec}
    (folder / f"{name}.json").write_text(json.dumps(rec))


def _classification(signal, probe, ft_works=True):
    return {"differences": {"linear probe": {"MAE − untrained": _d(*signal), "i-MAE − MAE": _d(*probe),
                                             "i-MAE − MAE continued": _d(*probe)},
                            "fine-tune": {"i-MAE − MAE": _d(0.02, 0.01, 0.03)}},
            "finetune_works": ft_works}


def _separability(diffs):
    sub = {"i-MAE − MAE": _d(*[list(x) for x in zip(*diffs)]),
           "i-MAE − MAE continued": _d(*[list(x) for x in zip(*diffs)]),
           "MAE − untrained": _d([0.1] * 3, [0.05] * 3, [0.15] * 3)}
    return {"alphas": [0.1, 0.3, 0.5], "differences": {"sub": sub}, "ratio_differences": {"sub": sub}}


def test_findings_verdicts_follow_the_intervals_and_the_training_signal(tmp_path):
    _write(tmp_path, "classification", _classification((0.08, 0.06, 0.10), (0.02, 0.01, 0.03), ft_works=False))
    _write(tmp_path, "separability", _separability([(0.05, 0.02, 0.08), (-0.04, -0.06, -0.02), (0.0, -0.01, 0.01)]))
    t = findings.findings(tmp_path).set_index("claim")
    v = t["verdict"]
    assert v["i-MAE learns better representations than MAE for linear probing"] == "supported"
    assert v["... and for fine-tuning"] == "not detected at this scale"  # the recipe is not shown to work
    assert "does not beat" in t.loc["... and for fine-tuning", "controls"]
    ls = "Two-way reconstruction with distillation makes the mixture's latent linearly separable"
    assert v[ls] == "contradicted"  # at alpha = 0.3 the interval lies below 0
    assert v["The separability effect holds across α"] == "contradicted"
    assert v["Semantics-enhanced (same-class) sampling raises the degree of semantics"] == "not measured"
    assert "`small`" in t.loc[ls, "scale"] and "3 training seeds" in t.loc[ls, "scale"]


def test_no_training_signal_means_nothing_is_detected(tmp_path):
    _write(tmp_path, "classification", _classification((0.0, -0.01, 0.01), (0.05, 0.03, 0.07)))
    t = findings.findings(tmp_path).set_index("claim")
    assert t.loc["i-MAE learns better representations than MAE for linear probing", "verdict"] == \
        "not detected at this scale"


def test_the_largest_scale_wins_when_results_land(tmp_path):
    _write(tmp_path, "classification", _classification((0.0, -0.01, 0.01), (0.0, -0.01, 0.01)), preset="tiny")
    _write(tmp_path, "classification", _classification((0.1, 0.08, 0.12), (-0.03, -0.05, -0.01)),
           preset="cifar", sub="cifar")
    t = findings.findings(tmp_path).set_index("claim")
    row = t.loc["i-MAE learns better representations than MAE for linear probing"]
    assert row["verdict"] == "contradicted" and "`cifar`" in row["scale"]


def _paper_scale(signal, probe, ls_ratio, ds=None):
    rec = {"alphas": [0.1, 0.3, 0.5], "runs": {"mae": {"method": "mae", "epochs": 55},
                                               "imae": {"method": "imae", "epochs": 33}},
           "hardware": "stored GPU campaign results (1x H200)",
           "accuracy": {"linear-probe": {"differences": {"MAE − untrained": _d(*signal), "i-MAE − MAE": _d(*probe)}}},
           "ls_ratio_differences": {"i-MAE − MAE": _d(*[list(x) for x in zip(*ls_ratio)])}}
    if ds is not None:
        rec.update(ds_alphas=[0.1, 0.3, 0.5], ds_differences={"i-MAE − MAE": _d(*[list(x) for x in zip(*ds)])})
    return rec


def test_paper_scale_findings_judge_the_campaign_and_name_what_is_pending(tmp_path):
    assert findings.paper_scale_findings(tmp_path) is None  # no campaign chapter: no table
    _write(tmp_path, "paper_scale", _paper_scale((0.09, 0.08, 0.10), (0.026, 0.017, 0.034),
                                                 [(0.01, 0.005, 0.02), (0.045, 0.04, 0.05), (0.0, -0.01, 0.01)],
                                                 ds=[(0.0, -0.01, 0.01), (0.01, 0.003, 0.02), (0.0, -0.01, 0.01)]),
           preset="cifar", sub="cifar")
    t = findings.paper_scale_findings(tmp_path).set_index("claim")
    v = t["verdict"]
    ls = "Two-way reconstruction with distillation makes the mixture's latent linearly separable"
    # i-MAE trained longer than the MAE it beats: the verdict says the equal-compute control is missing
    assert v[ls] == "supported (before the equal-compute control)"
    assert v["i-MAE learns better representations than MAE for linear probing"].startswith("supported")
    assert v["... and for fine-tuning"] == "pending (campaign stage finetune)"
    assert v["The separability effect holds across α"] == "not detected at this scale"  # alpha 0.5: within noise
    assert v["The semantics effect holds across α"] == "not detected at this scale"  # 1 of 2 alphas below 0.5
    assert "MAE 55 + i-MAE 33 epochs, 1 training seed" in findings.paper_scale_findings(tmp_path).attrs["scale"]


def test_paper_scale_findings_without_training_signal_detect_nothing(tmp_path):
    _write(tmp_path, "paper_scale", _paper_scale((0.0, -0.01, 0.01), (0.026, 0.017, 0.034),
                                                 [(0.045, 0.04, 0.05)] * 3), preset="cifar", sub="cifar")
    t = findings.paper_scale_findings(tmp_path).set_index("claim")
    assert set(t["verdict"]) <= {"not detected at this scale"} | {v for v in t["verdict"] if v.startswith("pending")}
    assert t.loc["The semantics effect holds across α", "verdict"] == "pending (campaign stage eval)"


def test_paper_scale_findings_use_the_equal_compute_control_once_it_is_in(tmp_path):
    rec = _paper_scale((0.09, 0.08, 0.10), (0.026, 0.017, 0.034),
                       [(0.01, 0.005, 0.02), (0.045, 0.04, 0.05), (0.0, -0.01, 0.01)])
    rec["ls_ratio_differences"]["i-MAE − MAE continued"] = _d([0.0, 0.002, 0.0], [-0.01, -0.008, -0.01],
                                                             [0.01, 0.012, 0.01])
    rec["accuracy"]["linear-probe"]["differences"]["i-MAE − MAE continued"] = _d(0.02, 0.01, 0.03)
    _write(tmp_path, "paper_scale", rec, preset="cifar", sub="cifar")
    t = findings.paper_scale_findings(tmp_path)
    ls = t[t["claim"] == "Two-way reconstruction with distillation makes the mixture's latent linearly separable"]
    # no caveat on the i-MAE − MAE row now; the equal-compute row decides on its own interval
    assert list(ls["verdict"]) == ["supported", "not detected at this scale"]
    assert "equal compute" in ls["measurement"].iloc[1] and "next row" in ls["controls"].iloc[0]
    probe = t[t["claim"] == "i-MAE learns better representations than MAE for linear probing"]
    assert list(probe["verdict"]) == ["supported", "supported"]


def test_paper_scale_findings_judge_same_prob_and_fine_tuning_when_they_came_back(tmp_path):
    rec = _paper_scale((0.09, 0.08, 0.10), (0.026, 0.017, 0.034), [(0.045, 0.04, 0.05)] * 3)
    rec["same_prob_difference"] = {"same_prob 1 − same_prob 0": _d(0.01, -0.005, 0.025)}
    rec["finetune_differences"] = {"i-MAE − MAE": _d(0.02, 0.01, 0.03), "MAE − untrained": _d(0.0, -0.01, 0.01)}
    _write(tmp_path, "paper_scale", rec, preset="cifar", sub="cifar")
    t = findings.paper_scale_findings(tmp_path).set_index("claim")
    assert t.loc["Semantics-enhanced (same-class) sampling raises the degree of semantics", "verdict"] == \
        "not detected at this scale"
    # pretraining does not beat training from scratch with this recipe: the fine-tuning comparison decides nothing
    row = t.loc["... and for fine-tuning"]
    assert row["verdict"] == "not detected at this scale" and "from scratch" in row["controls"]
    rec["finetune_differences"]["MAE − untrained"] = _d(0.05, 0.03, 0.07)
    _write(tmp_path, "paper_scale", rec, preset="cifar", sub="cifar")
    assert findings.paper_scale_findings(tmp_path).set_index("claim").loc["... and for fine-tuning", "verdict"] == \
        "supported"
