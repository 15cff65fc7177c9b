"""A run's fingerprint names its cache entry: adding a config field at its default must not rename (and so
retrain) the runs already cached; a changed value must."""

import pytest

from imae import config
from imae.config import build_config, fingerprint


def test_the_books_cpu_edition_runs_keep_their_names():
    # the CPU edition's MAE teachers of training seeds 0 and 1 (book/results/*.json name them)
    assert fingerprint(build_config("small", method="mae", **{"train.seed": 0})) == "98f330c9a9"
    assert fingerprint(build_config("small", method="mae", **{"train.seed": 1})) == "e4b3900397"


def test_a_new_field_at_its_default_leaves_the_fingerprint_and_a_set_value_changes_it(monkeypatch):
    cfg = build_config("small", method="mae")
    before = fingerprint(cfg)
    real_to_dict, real_defaults = config.RunConfig.to_dict, config._field_defaults

    def with_knob(value):
        def to_dict(self):
            d = real_to_dict(self)
            d["train"]["new_knob"] = value  # as if TrainConfig had grown a field
            return d
        monkeypatch.setattr(config.RunConfig, "to_dict", to_dict)
        monkeypatch.setattr(config, "_field_defaults",
                            lambda sec: {**real_defaults(sec), **({"new_knob": 0.25} if sec == "train" else {})})
        return fingerprint(cfg)

    assert with_knob(0.25) == before
    assert with_knob(0.5) != before


def test_every_field_of_today_is_hashed_or_operational():
    # a field missing from both lists would silently count only when set: list it where it belongs
    d = build_config("tiny", method="imae", **{"imae.teacher": "x"}).to_dict()
    operational = {tuple(k.split(".")) for k in config._OPERATIONAL}
    for sec, fields in d.items():
        if not isinstance(fields, dict):
            continue
        for name in fields:
            known = name in config._HASHED_SINCE_FIRST.get(sec, set()) or (sec, name) in operational
            assert known or (sec, name) == ("train", "init_from"), f"{sec}.{name}"


@pytest.mark.parametrize("key,value", [("train.seed", 3), ("model.depth", 2), ("imae.w_distill_sub", 0.0)])
def test_a_changed_value_renames_the_run(key, value):
    base = build_config("tiny", method="mae" if not key.startswith("imae") else "imae",
                        **({"imae.teacher": "x"} if key.startswith("imae") else {}))
    other = build_config("tiny", method=base.method, **{key: value},
                         **({"imae.teacher": "x"} if key.startswith("imae") else {}))
    assert fingerprint(base) != fingerprint(other)
