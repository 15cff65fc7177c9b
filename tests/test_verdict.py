"""The verdict rule (imae.companion.verdict) on synthetic evidence: every branch, and each artefact the rule exists
for."""

import json

import numpy as np
import pytest

from imae.companion import comparison as cmp
from imae.companion import findings, stats, verdict
from imae.companion.stats import Items
from imae.companion.verdict import Evidence, Interval, judge

UP = Interval(0.05, 0.03, 0.07)  # clearly above 0 and above the smallest R² effect
MAE_LEARNS = {"MAE − untrained": Interval(0.03, 0.01, 0.05)}


def ev(main=UP, gates=None, equal=UP, seeds=3, metric="r2", **kw):
    return Evidence(metric=metric, main=main, gates=MAE_LEARNS if gates is None else gates, n_seeds=seeds,
                    equal_compute=equal, **kw)


def test_supported_needs_the_gate_the_mae_and_the_equal_compute_control_beyond_noise():
    assert judge(ev()).label == verdict.SUPPORTED


def test_a_metric_the_trained_mae_does_not_move_is_not_measurable_whatever_the_difference():
    flat = {"MAE − untrained": Interval(0.004, -0.015, 0.022)}  # the CPU edition's LS ratio gate
    v = judge(ev(gates=flat))
    assert v.label == verdict.NOT_MEASURABLE and "MAE − untrained" in v.reason
    assert judge(ev(gates={"MAE − untrained": Interval(-0.02, -0.04, -0.006)})).label == verdict.NOT_MEASURABLE
    # a missing gate is not a passed one, and no gate at all measures nothing
    assert judge(ev(gates={"MAE − untrained": None})).label == verdict.NOT_MEASURABLE
    assert judge(ev(gates={})).label == verdict.NOT_MEASURABLE


def test_every_gate_must_pass_for_example_fine_tuning_beats_scratch_and_the_probe():
    gates = {"MAE − untrained": UP, "fine-tuned MAE − its linear probe": Interval(-0.2, -0.22, -0.18)}
    assert judge(ev(gates=gates, metric="accuracy")).label == verdict.NOT_MEASURABLE


def test_the_clean_ceiling_artefact_is_not_supported():
    # The CPU edition's former "supported" row: LS over each model's clean ceiling +0.004 [+0.00002, +0.007]
    # (the MAE is its own reference, ceiling 1.000), raw R² +0.002 [-0.002, +0.006], and the MAE continued
    # +0.000 [-0.003, +0.003]. Judged on the raw R² it is not detected; even judged on the ratio it is
    # negligible (wholly below 0.01 R²), and against equal compute it is not detected.
    raw = Interval(0.002, -0.002, 0.006)
    ratio = Interval(0.004, 0.00002, 0.007)
    cont = Interval(0.0001, -0.003, 0.003)
    assert judge(ev(main=raw, equal=cont)).label == verdict.NOT_DETECTED
    assert judge(ev(main=ratio, equal=cont)).label == verdict.NEGLIGIBLE
    assert judge(ev(main=UP, equal=cont)).label == verdict.NOT_VS_EQUAL


def test_direction_and_size():
    assert judge(ev(main=Interval(-0.05, -0.07, -0.03))).label == verdict.CONTRADICTED
    assert judge(ev(main=Interval(0.0, -0.01, 0.01))).label == verdict.NOT_DETECTED
    assert judge(ev(main=Interval(0.005, 0.001, 0.009))).label == verdict.NEGLIGIBLE
    # accuracies: the smallest effect is 0.5 points (fractions in the records)
    acc = dict(metric="accuracy", gates={"MAE − untrained": Interval(0.08, 0.06, 0.1)})
    assert judge(ev(main=Interval(0.003, 0.001, 0.0045), equal=None, **acc)).label == verdict.NEGLIGIBLE
    assert judge(ev(main=Interval(0.01, 0.004, 0.016), equal=Interval(0.01, 0.004, 0.016), **acc)).label == \
        verdict.SUPPORTED  # an interval reaching past 0.5 points is not negligible
    # an interval that straddles the smallest effect is detected, not negligible
    assert judge(ev(main=Interval(0.01, 0.002, 0.018))).label == verdict.SUPPORTED


def test_equal_compute_within_noise_or_reversed_or_negligible():
    assert judge(ev(equal=Interval(0.0, -0.01, 0.01))).label == verdict.NOT_VS_EQUAL
    assert judge(ev(equal=Interval(-0.03, -0.05, -0.01))).label == verdict.NOT_VS_EQUAL
    assert judge(ev(equal=Interval(0.004, 0.001, 0.008))).label == verdict.NEGLIGIBLE
    assert judge(ev(equal=None)).label == verdict.BEFORE_EQUAL
    # by design equal compute (two pair policies from one teacher): no such control is needed
    assert judge(ev(equal=None, equal_compute_applies=False)).label == verdict.SUPPORTED


def test_one_training_seed_is_at_most_suggestive():
    assert judge(ev(seeds=1)).label == verdict.SUGGESTIVE
    v = judge(ev(seeds=1, equal=None))
    assert v.label == verdict.SUGGESTIVE and "equal-compute" in v.reason
    assert judge(ev(seeds=1, main=Interval(-0.05, -0.07, -0.03))).label == verdict.SUGGESTIVE_AGAINST
    assert judge(ev(seeds=1, main=Interval(0.0, -0.01, 0.01))).label == verdict.NOT_DETECTED


def test_pending_evidence_says_what_it_waits_for():
    v = judge(ev(pending="campaign stage seed1"))
    assert v.label == verdict.PENDING and "seed1" in v.reason
    assert judge(ev(main=None)).label == verdict.PENDING


def test_evidence_survives_its_json_record_and_bad_input_is_refused():
    e = ev(details={"self-reference": Interval(0.04, 0.03, 0.05)}, notes=["a note"], what="LS")
    back = Evidence.from_dict(json.loads(json.dumps(e.as_dict())))
    assert back == e and judge(back) == judge(e)
    with pytest.raises(ValueError, match="not ordered"):
        Interval(0.0, 0.1, -0.1)
    with pytest.raises(ValueError, match="unknown metric"):
        ev(metric="f1")
    with pytest.raises(ValueError, match="needs an index"):
        Interval.of({"mean": [0, 1], "lo": [0, 1], "hi": [0, 1]})
    assert Interval.of({"mean": [0, 1], "lo": [-1, 0.5], "hi": [1, 2]}, 1) == Interval(1.0, 0.5, 2.0)


def _r2_items(rng, effect, n=400, alphas=4, noise=0.3):
    """Per-alpha r2 items: sse = sst * (1 - effect[alpha]) + noise, the same sst for every model."""
    sst = np.ones((alphas, n))
    sse = sst * (1 - np.asarray(effect)[:, None]) + noise * rng.standard_normal((alphas, n)) * 0.1
    return Items("r2", sse, sst)


def test_one_test_on_the_alpha_averaged_difference_not_a_count_of_per_alpha_calls():
    rng = np.random.default_rng(0)
    # i-MAE above the MAE at 3 of 4 alphas; at the first both sit at the floor (the paper-scale case that the
    # per-alpha count called "not detected")
    base = [_r2_items(rng, [0.0, 0.1, 0.2, 0.3]) for _ in range(3)]
    up = [_r2_items(rng, [0.0, 0.14, 0.24, 0.34]) for _ in range(3)]
    untrained = [_r2_items(rng, [0.0, 0.05, 0.1, 0.15]) for _ in range(3)]
    per_alpha = stats.difference(up, base)
    assert stats.direction(per_alpha.lo[0], per_alpha.hi[0]) == "within noise"
    avg = stats.difference(up, base, reduce=stats.alpha_mean([0, 1, 2, 3]))
    assert np.ndim(avg.mean) == 0 and avg.lo > 0
    assert avg.mean == pytest.approx(np.mean(per_alpha.mean))
    res = {"MAE": [{"items": {"x": b}} for b in base], "i-MAE": [{"items": {"x": u}} for u in up],
           "untrained": [{"items": {"x": u}} for u in untrained]}
    e = cmp.evidence(res, lambda r: r["items"]["x"], "r2", what="avg", equal=None, reduce=stats.alpha_mean([0, 1, 2, 3]))
    assert e.n_seeds == 3 and e.main.lo > 0 and not e.equal_compute_applies
    assert judge(e).label == verdict.SUPPORTED
    # the same with an equal-compute arm that equals the i-MAE: extra training explains it
    res["MAE continued"] = res["i-MAE"]
    e = cmp.evidence(res, lambda r: r["items"]["x"], "r2", what="avg", reduce=stats.alpha_mean([0, 1, 2, 3]))
    assert judge(e).label == verdict.NOT_VS_EQUAL


def test_headline_alpha_lookup_is_one_rule():
    assert stats.headline_index([0.1, 0.3, 0.5]) == 1
    assert stats.headline_index([0.05, 0.1, 0.25, 0.35, 0.5]) == 2  # nearest; a tie goes to the lower alpha
    assert stats.headline_index([0.5]) == 0
    assert stats.below_half([0.1, 0.3, 0.5]) == [0, 1]
    with pytest.raises(ValueError):
        stats.headline_index([])


def _record(tmp_path, name, preset, claims, **extra):
    sub = tmp_path / preset
    sub.mkdir(exist_ok=True)
    rec = {"notebook": name, "preset": preset, "claims": {k: e.as_dict() for k, e in claims.items()}, **extra}
    (sub / f"{name}.json").write_text(json.dumps(rec))


def test_findings_judge_each_scale_with_the_same_rule(tmp_path):
    _record(tmp_path, "separability", "small", {"ls": ev(main=Interval(0.002, -0.002, 0.006)), "ls_alpha": ev()},
            seeds=[0, 1, 2], runs={"a": {"method": "mae", "dataset": "cifar10", "train_images": "all", "epochs": 10,
                                         "hardware": "CPU"}, "b": {"method": "imae", "epochs": 4}})
    _record(tmp_path, "classification", "small", {"probe": ev(metric="accuracy", gates={"MAE − untrained": UP})})
    _record(tmp_path, "paper_scale", "cifar", {"probe": ev(metric="accuracy", seeds=1, equal=None),
                                               "ls": ev(pending="campaign stage seed1")},
            runs={"mae": {"epochs": 55}, "imae": {"epochs": 33}}, hardware="H200")
    a = findings.answer_table(tmp_path).set_index("claim")
    ls_row = a.loc[findings.CLAIMS[0].short]
    assert ls_row["CPU edition"].startswith("**not detected**") and "+0.002" in ls_row["CPU edition"]
    assert ls_row["paper scale"].startswith("**pending**")
    probe = a.loc["Linear probe"]
    assert probe["CPU edition"].startswith("**supported**") and "pts" in probe["CPU edition"]
    assert probe["paper scale"].startswith("**suggestive (one training seed)**")
    assert a.loc["Fine-tuning", "CPU edition"] == "not measured"
    cpu = findings.findings(tmp_path, "cpu").set_index("claim")
    assert cpu.loc[findings.CLAIMS[1].claim, "verdict"] == verdict.SUPPORTED
    assert "MAE − untrained" in cpu.loc[findings.CLAIMS[1].claim, "gate"]
    paper = findings.findings(tmp_path, "paper").set_index("claim")
    assert paper.loc[findings.CLAIMS[4].claim, "equal compute"] == "not run yet"
    assert "10 + i-MAE 4 epochs, 3 training seeds" in findings.scale_line(tmp_path, "cpu")
    assert "MAE 55 + i-MAE 33 epochs, 1 training seed," in findings.scale_line(tmp_path, "paper")
    # the caller labels the scale ("**CPU edition:** ..."), so the line does not repeat it
    assert all(findings.scale_line(tmp_path, s).startswith("`") for s in ("cpu", "paper"))
    with pytest.raises(ValueError):
        findings.findings(tmp_path, "gpu")
