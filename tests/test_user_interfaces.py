"""Small interface promises: "every image" can be said for a subsetting preset, and the throughput benchmark
picks sizes that fit the device it runs on."""

from __future__ import annotations

import pytest

from benchmarks import throughput
from imae.cli import build_parser, config_from_args
from imae.config import RunConfig, build_config, fingerprint
from imae.data.sources import _check_batch
from imae.errors import ConfigError


# ------------------------------------------------------------------------------------- subset_per_class
def test_subset_per_class_zero_means_every_image():
    assert build_config("tiny").data.subset_per_class == 100  # the preset subsets
    assert build_config("tiny", subset_per_class=None).data.subset_per_class == 100  # None: preset's choice
    cfg = build_config("tiny", subset_per_class=0)
    assert cfg.data.subset_per_class is None
    assert build_config("tiny", **{"data.subset_per_class": 0}).data.subset_per_class is None
    # stored as None: the same config (and fingerprint) as one written with None, and it round-trips
    again = RunConfig.from_dict(cfg.to_dict())
    assert again.data.subset_per_class is None and fingerprint(again) == fingerprint(cfg)
    assert fingerprint(cfg) != fingerprint(build_config("tiny"))


@pytest.mark.parametrize("argv", [["--subset-per-class", "0"], ["--set", "data.subset_per_class=0"]])
def test_subset_per_class_zero_from_the_command_line(argv):
    args = build_parser().parse_args(["pretrain", "--method", "mae", "--out", "x", "--preset", "tiny", *argv])
    assert config_from_args(args, "mae").data.subset_per_class is None


def test_subset_messages_recommend_the_spelling_that_works():
    with pytest.raises(ConfigError, match="or 0 for every image"):
        build_config("tiny", subset_per_class=-3)
    with pytest.raises(ConfigError) as e:
        _check_batch(128, 100, 1, "cifar10 train")
    assert "subset_per_class=0" in str(e.value) and "subset_per_class=None" not in str(e.value)
    assert build_config("tiny", subset_per_class=0).data.subset_per_class is None  # ... and it does work


# ------------------------------------------------------------------------------------- benchmark defaults
def _args(*argv):
    return throughput.parse_args(list(argv))


def test_throughput_defaults_on_cpu_are_cpu_sized():
    args = _args("--device", "cpu")
    chosen = throughput.choose_defaults(args, "cpu")
    assert (args.preset, args.batch, args.warmup, args.steps) == ("tiny", 128, 2, 10)
    assert chosen == {"preset": "tiny", "warmup": 2, "steps": 10, "batch": 128}


def test_throughput_defaults_on_cpu_cap_a_given_presets_batch():
    args = _args("--preset", "cifar", "--device", "cpu")
    chosen = throughput.choose_defaults(args, "cpu")
    assert build_config("cifar").train.batch_size == 1024
    assert args.preset == "cifar" and args.batch == throughput.CPU_MAX_BATCH == 128
    assert "preset" not in chosen and chosen["batch"] == 128


def test_throughput_defaults_on_cuda_keep_the_paper_scale():
    args = _args()
    chosen = throughput.choose_defaults(args, "cuda")
    assert (args.preset, args.batch, args.warmup, args.steps) == ("cifar", 1024, 5, 20)
    assert set(chosen) == {"preset", "batch", "warmup", "steps"}


def test_throughput_given_options_are_never_replaced():
    for device in ("cpu", "cuda"):
        args = _args("--preset", "cifar", "--batch", "1024", "--warmup", "0", "--steps", "3")
        assert throughput.choose_defaults(args, device) == {}
        assert (args.preset, args.batch, args.warmup, args.steps) == ("cifar", 1024, 0, 3)
