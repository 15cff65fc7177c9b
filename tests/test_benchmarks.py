"""Benchmarks run end to end and write their JSON (smoke only: no timing assertions)."""

from __future__ import annotations

import json

import pytest

from benchmarks import cpu_edition, cpu_pipeline, throughput


def test_throughput_smoke_writes_json(tmp_path):
    out = tmp_path / "tp.json"
    res = throughput.main(["--preset", "tiny", "--batch", "8", "--device", "cpu", "--warmup", "1", "--steps", "2",
                           "--workers", "0", "--peak-tflops", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["rows"] and len(data["rows"]) == 4 == len(res["rows"])
    by = {(r["method"], r["path"]): r for r in data["rows"]}
    assert set(by) == {(m, p) for m in ("mae", "imae") for p in ("faithful", "fast")}
    for r in data["rows"]:
        assert r["img_per_s"] > 0 and r["peak_mem_mb"] > 0 and 0 < r["mfu"] < 1
    assert by[("mae", "faithful")]["ratio"] is None and by[("mae", "fast")]["ratio"] > 0
    # i-MAE does more work per image than MAE (two decoder branches, two teacher passes)
    assert by[("imae", "fast")]["gflop_per_img"] > 1.5 * by[("mae", "fast")]["gflop_per_img"]
    proj = data["projection"]
    assert proj["total_s"] > proj["mae_s"] + proj["imae_s"] > 0


def test_throughput_real_dataset_option(toy_root, tmp_path):
    res = throughput.main(["--preset", "tiny", "--batch", "8", "--device", "cpu", "--warmup", "0", "--steps", "2",
                           "--workers", "0", "--methods", "mae", "--paths", "fast", "--dataset", "cifar10",
                           "--data-root", str(toy_root), "--peak-tflops", "1", "--no-project"])
    assert res["data"] == "cifar10" and len(res["rows"]) == 1 and "projection" not in res


def test_cpu_pipeline_smoke_writes_json(toy_root, tmp_path):
    out = tmp_path / "pipe.json"
    res = cpu_pipeline.main(["--dataset", "cifar10", "--data-root", str(toy_root), "--json", str(out),
                             "--out-dir", str(tmp_path / "runs"), "--set", "train.epochs=1",
                             "--set", "train.batch_size=100", "--set", "data.subset_per_class=0",
                             "--eval-what", "knn", "reconstruction"])
    data = json.loads(out.read_text())
    names = [s["stage"] for s in data["stages"]]
    assert names == ["mae", "imae", "evaluate"]
    assert data["stages"][0]["steps"] == 2 and data["stages"][1]["steps"] == 2
    assert data["total_s"] > 0 and data["peak_rss_mb"] > 0
    evals = res["stages"][2]["evaluations"]  # this checkout has imae.metrics: the real evaluations ran
    assert [(e["model"], e["what"]) for e in evals] == [(m, w) for m in ("mae", "imae") for w in ("knn", "reconstruction")]
    assert not [e for e in evals if "error" in e]


def test_cpu_pipeline_times_every_evaluation_of_a_metrics_module(tmp_path):
    calls = []

    class FakeMetrics:
        WHATS = ("knn", "finetune", "separability")

        @staticmethod
        def evaluate(checkpoint, what, *, out=None, reference=None, device="auto", **options):
            calls.append((checkpoint, what, device, options["dataset"]))
            if what == "separability":
                raise RuntimeError("boom")
            return {"what": what}

    args = cpu_pipeline.parse_args(["--dataset", "cifar10-mini"])
    res = cpu_pipeline.run_evaluations(FakeMetrics, {"mae": tmp_path / "a", "imae": tmp_path / "b"}, args)
    assert [(c[1], c[2], c[3]) for c in calls] == [("knn", "cpu", "cifar10-mini"), ("separability", "cpu",
                                                   "cifar10-mini")] * 2  # finetune is left out by default
    assert [e.get("error", "")[:12] for e in res["evaluations"]] == ["", "RuntimeError"] * 2
    assert cpu_pipeline.find_metrics()[0] is None or hasattr(cpu_pipeline.find_metrics()[0], "evaluate")


def test_cpu_edition_times_evaluation_before_and_after_with_identical_results(toy_root, tmp_path):
    out = tmp_path / "edition.json"
    res = cpu_edition.main(["--preset", "tiny", "--data-root", str(toy_root), "--skip-train", "--json", str(out)])
    ev = json.loads(out.read_text())["evaluation"]
    assert ev["identical_results"] is True and ev == json.loads(json.dumps(res["evaluation"]))
    assert set(ev["passes"]["before"]["seconds"]) == set(cpu_edition.EVALS)
    # the cache was off before (no hits) and on after: later metrics reuse the clean and mixture features
    assert ev["passes"]["before"]["hits"] == 0 and ev["passes"]["after"]["hits"] >= 4


def test_cpu_edition_projection_counts_every_training_run_of_the_notebooks():
    params = {"seeds": [0, 1, 2], "same_probs": [0.0, 1.0], "ablation_epochs": 1}
    p = cpu_edition.projection(params, {"mae": 1000.0, "imae": 500.0}, "small")
    # MAE: 3 teachers x 10 epochs + 3 continued x 4; i-MAE: (3 seeds + same_prob 0) x 4 + 7 variants x 1
    assert p["epochs"] == {"mae": 42, "imae": 23} and p["images_per_epoch"] == 50_000
    assert p["total_min"] == pytest.approx((42 * 50_000 / 1000 + 23 * 50_000 / 500) / 60)


def test_performance_page_shows_the_cpu_edition_and_a_from_scratch_reproduce(tmp_path):
    from imae.companion.reproduce import write_performance

    results = tmp_path / "results"
    results.mkdir()
    secs = {w: 2.0 for w in cpu_edition.EVALS}
    (results / "cpu_edition_small.json").write_text(json.dumps({
        "preset": "small", "cpu": "x", "threads": 2, "torch": "t", "peak_rss_mb": 1500,
        "training": {"per_method": {"mae": {"before_img_per_s": 900.0, "compiled_img_per_s": 950.0, "compile_s": 40.0}}},
        "evaluation": {"passes": {"before": {"seconds": secs, "total_s": 10.0},
                                  "after": {"seconds": {w: 1.0 for w in secs}, "total_s": 5.0}},
                       "speedup": 2.0, "identical_results": True, "encoder_forward_img_per_s": 1400.0}}))
    (results / "reproduce_small.json").write_text(json.dumps({
        "preset": "small", "cpu": "x", "torch_threads": 2, "notebooks_s": {"pretrain": 3000.0}, "total_s": 3000.0,
        "peak_kernel_rss_mb": 1600, "from_scratch": {"wall_s": 5400.0}}))
    text = write_performance(tmp_path).read_text()
    assert "| MAE | 900 | 950 | 40 |" in text and "| **total** | **10.0** | **5.0** |" in text
    assert "2.00x faster with identical results" in text
    assert "EMPTY runs cache" in text and "90.0 min wall time" in text
    row = {"epochs": 10, "train_s": 600.0, "knn": {"trained": [0.41, 0.40, 0.42], "untrained": [0.28, 0.27, 0.29],
                                                  "gain": [0.13, 0.11, 0.15]},
           "linear-probe": {"trained": [0.49, 0.48, 0.50], "untrained": [0.41, 0.40, 0.42], "gain": [0.08, 0.07, 0.09]}}
    (results / "config_search_small.json").write_text(json.dumps({
        "preset": "small", "seed": 0, "max_images": 5000, "configs": {"preset as is": row}}))
    text = write_performance(tmp_path).read_text()
    assert "| preset as is | 10 | 600 | 41.0 / 28.0 | +13.0 [+11.0, +15.0] | 49.0 / 41.0 | +8.0 [+7.0, +9.0] |" in text
    other = {**row, "vs_first": {"knn": [-0.005, -0.01, 0.0], "linear-probe": [0.02, 0.01, 0.03]}}
    (results / "config_search_small_seeds.json").write_text(json.dumps({
        "preset": "small", "seed": 0, "seeds": [0, 1, 2], "max_images": 5000,
        "configs": {"preset as is": row, "twice the learning rate": other}}))
    text = write_performance(tmp_path).read_text()
    assert "training seeds 0, 1, 2" in text and "compare each variant with `preset as is`" in text
    assert "| preset as is | 10 | 600 | 41.0 / 28.0 | +13.0 [+11.0, +15.0] | 49.0 / 41.0 | +8.0 [+7.0, +9.0] | — | — |" in text
    assert "| +8.0 [+7.0, +9.0] | -0.5 [-1.0, +0.0] | +2.0 [+1.0, +3.0] |" in text


def test_performance_page_says_when_a_reproduce_restored_its_runs_from_the_shipped_weights(tmp_path):
    from imae.companion.reproduce import write_performance

    (tmp_path / "results").mkdir()
    rec = {"preset": "small", "cpu": "x", "torch_threads": 2, "notebooks_s": {"separability": 600.0},
           "total_s": 600.0, "peak_kernel_rss_mb": 1600,
           "from_shipped": {"runs": 22, "wall_s": 1200.0, "training_s": 6000.0}}
    (tmp_path / "results" / "reproduce_small.json").write_text(json.dumps(rec))
    text = write_performance(tmp_path).read_text()
    assert "its 22 trained runs restored from the repository's `weights/`" in text
    assert "20.0 min wall time" in text and "`RETRAIN=1` adds the 100 min" in text and "shared the" not in text
    rec["from_shipped"]["note"] = "another process shared the cores"
    (tmp_path / "results" / "reproduce_small.json").write_text(json.dumps(rec))
    assert "cards' training times); another process shared the cores)" in write_performance(tmp_path).read_text()
    rec["from_shipped"].update(finetunes=12, finetune_s=1440.0)
    (tmp_path / "results" / "reproduce_small.json").write_text(json.dumps(rec))
    text = write_performance(tmp_path).read_text()
    assert "its 22 trained runs and 12 fine-tuned classifiers restored" in text
    assert "training times) and the 24 min of the fine-tunes (their records); another" in text
    rec["fresh_clone_s"] = {"classification": 250.0}
    (tmp_path / "results" / "reproduce_small.json").write_text(json.dumps(rec))
    assert "with an EMPTY runs cache" in (text := write_performance(tmp_path).read_text())
    assert "nothing shared with another chapter): classification 250 s." in text


def test_a_figure_rerun_keeps_the_full_runs_timing_record(tmp_path):
    from imae.companion.reproduce import write_timings

    path = tmp_path / "reproduce_small.json"
    write_timings(path, "small", {"pretrain": 100.0, "separability": 50.0})
    rec = json.loads(path.read_text())
    rec["from_scratch"] = {"wall_s": 200.0}
    path.write_text(json.dumps(rec))
    write_timings(path, "small", {"separability": 20.0}, partial=True)
    rec = json.loads(path.read_text())
    assert rec["notebooks_s"] == {"pretrain": 100.0, "separability": 50.0} and rec["total_s"] == 150.0
    assert rec["from_scratch"] == {"wall_s": 200.0} and rec["figure_s"] == {"separability": 20.0}
    from imae.companion.reproduce import NOTEBOOKS, timing_is_partial

    # `--only` naming every notebook is still a rerun; only a plain `make reproduce` is a full run
    assert timing_is_partial(list(NOTEBOOKS)) and timing_is_partial(["findings"]) and not timing_is_partial(None)
    write_timings(path, "small", {"pretrain": 90.0, "separability": 40.0})  # a new full run replaces it all
    rec = json.loads(path.read_text())
    assert "from_scratch" not in rec and "figure_s" not in rec and rec["total_s"] == 130.0


def test_throughput_profile_names_where_a_step_goes(tmp_path):
    """--profile N records, per fast path, the operators that take the most time per step, with their shares."""
    res = throughput.main(["--preset", "tiny", "--batch", "8", "--device", "cpu", "--warmup", "1", "--steps", "1",
                           "--methods", "mae", "--paths", "faithful", "fast", "--profile", "2", "--no-project",
                           "--workers", "0", "--out", str(tmp_path / "t.json")])
    faithful, fast = res["rows"]
    assert "profile" not in faithful
    prof = fast["profile"]
    assert 3 <= len(prof) <= 15 and all(p["ms_per_step"] > 0 and 0 < p["share"] <= 1 for p in prof)
    assert sum(p["share"] for p in prof) <= 1.0 + 1e-9
    assert prof == sorted(prof, key=lambda p: -p["ms_per_step"])
    assert any("addmm" in p["name"] or "linear" in p["name"] or "mm" in p["name"] for p in prof)


def test_config_search_scores_each_configuration_against_its_untrained_encoder(toy_root, tmp_path):
    """benchmarks/config_search.py: one row per configuration with the trained and untrained kNN/probe and the
    paired gain's interval, the JSON rewritten after each configuration, runs cached for a resumed search."""
    from benchmarks import config_search

    micro = ["data.download=false", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
             "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=2",
             "train.batch_size=32", "train.epochs=1"]
    out = tmp_path / "search.json"
    argv = ["--preset", "tiny", "--configs", "preset as is", "twice the learning rate", "--data-root",
            str(toy_root), "--runs-dir", str(tmp_path / "runs"), "--max-images", "100", "--device", "cpu",
            "--out", str(out), *[a for kv in micro for a in ("--set", kv)]]
    res = config_search.main(argv)
    data = json.loads(out.read_text())
    assert list(data["configs"]) == ["preset as is", "twice the learning rate"] == list(res["configs"])
    for row in data["configs"].values():
        for what in ("knn", "linear-probe"):
            m, lo, hi = row[what]["gain"]
            assert lo <= m <= hi and 0 <= row[what]["trained"][0] <= 1 and 0 <= row[what]["untrained"][0] <= 1
        assert row["epochs"] == 1 and row["train_s"] > 0
    # the two configurations share the untrained control (same architecture) but not the trained run
    assert data["configs"]["preset as is"]["knn"]["untrained"] == data["configs"]["twice the learning rate"]["knn"]["untrained"]
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    again = config_search.main(argv)  # resumed: every run and evaluation is reused, none is trained again
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == runs
    def scores(r):  # everything but the search's own wall time
        return {k: {f: v for f, v in row.items() if f != "wall_s"} for k, row in r["configs"].items()}

    assert scores(again) == scores(res)


def test_config_search_over_training_seeds_pairs_each_configuration_with_the_first(toy_root, tmp_path):
    """--seeds: each configuration trained with every seed, intervals over seeds, and every configuration after
    the first compared with it, paired by training seed and test item."""
    from benchmarks import config_search

    micro = ["data.download=false", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
             "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=2",
             "train.batch_size=32", "train.epochs=1"]
    res = config_search.main(["--preset", "tiny", "--configs", "preset as is", "twice the learning rate",
                              "--seeds", "0", "1", "--data-root", str(toy_root), "--runs-dir", str(tmp_path / "runs"),
                              "--max-images", "100", "--device", "cpu", *[a for kv in micro for a in ("--set", kv)]])
    assert res["seeds"] == [0, 1] and res["seed"] == 0
    first, second = res["configs"]["preset as is"], res["configs"]["twice the learning rate"]
    assert len(first["train_s_per_seed"]) == 2 and "vs_first" not in first
    for what in ("knn", "linear-probe"):
        m, lo, hi = second["vs_first"][what]
        assert lo <= m <= hi
        # the paired difference's mean is the difference of the two means over the same seeds and items
        assert m == pytest.approx(second[what]["trained"][0] - first[what]["trained"][0], abs=1e-9)
    # one trained run per configuration and seed; the untrained controls of a seed score alike (same architecture)
    names = [p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
    assert sum(n.startswith("tiny-mae-") for n in names) == 4
    assert first["knn"]["untrained"] == second["knn"]["untrained"]


def test_classifier_fits_compares_three_paths_on_the_same_problems(tmp_path):
    from benchmarks import classifier_fits

    out = tmp_path / "fits.json"
    res = classifier_fits.main(["--device", "cpu", "--fits", "3", "--rows", "300", "--test-rows", "100",
                                "--dim", "16", "--classes", "4", "--parallel", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert list(res["paths"]) == ["torch-lbfgs", "ours", "ours-threaded"]
    base = res["paths"]["torch-lbfgs"]
    assert base["speedup"] == 1.0 and base["max_accuracy_diff"] == 0.0 and base["same_penalty"] == 3
    # threads change nothing but the wall time; the optimisers agree to the noise of the penalty choice
    assert res["paths"]["ours-threaded"]["max_accuracy_diff"] == res["paths"]["ours"]["max_accuracy_diff"] < 0.05
    from imae.metrics import probes

    assert probes._lbfgs_fit is not classifier_fits.torch_lbfgs_fit  # the baseline is swapped back


def test_the_execution_stamp_counts_code_changes_not_the_books_own_outputs(tmp_path):
    import subprocess

    from imae.companion.reproduce import _commit

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "chapter.ipynb").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    (tmp_path / "book" / "chapter.ipynb").write_text('{"executed": true}')  # what a rerun writes
    assert "uncommitted" not in _commit(tmp_path)
    (tmp_path / "code.py").write_text("x = 2\n")
    assert _commit(tmp_path).endswith("(with uncommitted changes)")


def test_concurrent_benchmark_measures_each_count_in_one_run(toy_root, tmp_path):
    from benchmarks import concurrent

    out = tmp_path / "concurrent.json"
    res = concurrent.main(["--preset", "tiny", "--device", "cpu", "--method", "imae", "--counts", "1", "2",
                           "--steps", "6", "--warmup", "2", "--batch", "32", "--data-root", str(toy_root),
                           "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    one, two = res["rows"]
    assert (one["runs"], two["runs"]) == (1, 2) and len(two["img_per_s"]) == 2
    assert all(r > 0 for r in one["img_per_s"] + two["img_per_s"])
    assert two["aggregate_img_per_s"] == pytest.approx(sum(two["img_per_s"]), abs=0.2) and one["speedup"] == 1.0
    # each run trained its steps (the i-MAE, from the untrained teacher the benchmark made)
    from imae.runs import read_metrics
    assert max(r["step"] for r in read_metrics(tmp_path / "work" / "n2" / "run1") if "loss" in r) == 6


def test_the_rerun_page_quotes_the_recorded_costs():
    """book/rerun.md's times are the stored record's (imae.companion.reproduce.rerun_costs), not typed apart."""
    from pathlib import Path

    from imae.companion.reproduce import rerun_costs

    book = Path(__file__).resolve().parents[1] / "book"
    rec = json.loads((book / "results" / "reproduce_small.json").read_text())
    page = " ".join((book / "rerun.md").read_text().split())
    for key, text in rerun_costs(rec).items():
        assert text in page, f"book/rerun.md does not quote the recorded {key}: {text!r}"


def test_rerun_costs_prefer_a_chapter_measured_alone():
    from imae.companion.reproduce import rerun_costs

    rec = {"notebooks_s": {"pretrain": 13.5, "classification": 108.1}, "fresh_clone_s": {"classification": 198.5},
           "from_shipped": {"runs": 22, "wall_s": 1220.0, "training_s": 12364.0, "finetunes": 12, "finetune_s": 2272.0}}
    assert rerun_costs(rec) == {"chapters": "pretrain 14 s, classification 3.3 min alone", "reproduce": "20.3 min",
                                "retrain": "206 min of training for the 22 runs and 38 min for the 12 fine-tunes"}
