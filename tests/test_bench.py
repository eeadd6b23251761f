"""`albert-bench` end to end on tiny models (no timing asserts)."""

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = [
    "model.num_layers=2", "model.num_heads=2", "model.embedding_dim=16", "model.hidden_dim=32",
    "model.intermediate_dim=64", "data.sequence_length=24", "tokenizer.vocab_size=120",
    "trainer.batch_size=16", "strategy=cpu",
]
QUICK = ["bench.windows=1", "bench.window_seconds=0.01", "bench.min_window_steps=1",
         "bench.matmul_size=128", "bench.matmul_seconds=0.1"]


def _check(written: dict, wall_seconds: float) -> None:
    if written["config"].get("task") is None:  # mode=predict
        _check_predict(written)
        return
    for loop in ("app", "bare_keras_hub"):
        for measure in ("examples_per_second", "padded_mfu", "real_mfu",
                        "real_tokens_per_second", "padded_tokens_per_second"):
            value = written[loop][measure]
            assert 0 < value["min"] <= value["median"] <= value["max"], (loop, measure)
            assert math.isfinite(value["max"])
        assert written[loop]["real_mfu"]["median"] <= written[loop]["padded_mfu"]["median"]
    seconds = written["window_seconds"]
    assert len(seconds["app"]) == len(seconds["bare"]) == written["windows"]
    # Both loops ran the same batches: app / bare speed is bare / app time, window by window,
    # and each window's examples/s is its examples over its seconds.
    ratios = [bare / app for app, bare in zip(seconds["app"], seconds["bare"], strict=True)]
    assert written["app_over_bare"]["median"] == pytest.approx(statistics.median(ratios))
    examples = written["first_window_batches"]["examples"]
    for loop, times in (("app", seconds["app"]), ("bare_keras_hub", seconds["bare"])):
        rates = written[loop]["examples_per_second"]
        assert rates["max"] == pytest.approx(examples / min(times))
        assert rates["min"] == pytest.approx(examples / max(times))
    assert written["pipeline"]["cached_examples_per_second"] > 0
    # Start-up: its phases, each measured, add up to the process age at the first step, which
    # is within the command's own wall time.
    startup = written["startup_seconds"]
    assert set(startup) == {"imports_and_config", "strategy_and_session", "data_read",
                             "tokenizer", "pipelines", "model_build", "first_step", "total"}
    assert all(value > 0 for value in startup.values()), startup
    assert sum(startup.values()) - startup["total"] == pytest.approx(startup["total"])
    assert startup["total"] == written["startup_to_first_step_seconds"] < wall_seconds
    # Peak RSS in MB: TensorFlow alone takes hundreds; below the machine's memory.
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    assert 200 < written["peak_rss_mb"] < memory_mb


def _check_predict(written: dict) -> None:
    """Each loop's examples/s is the texts over its times; the bucketed / full-length ratio is
    that of their times, round by round."""
    for loop in ("app_bucketed", "app_full_length", "bare_bucketed", "bare_full_length"):
        seconds, rates = written[loop]["seconds"], written[loop]["examples_per_second"]
        assert rates["max"] == pytest.approx(written["examples"] / seconds["min"])
        assert rates["min"] == pytest.approx(written["examples"] / seconds["max"])
    if written["rounds"] == 1:
        full, bucketed = (written[f"app_{mode}"]["seconds"]["median"]
                          for mode in ("full_length", "bucketed"))
        assert written["app_bucketed_over_full_length"]["median"] == \
            pytest.approx(full / bucketed)


def run_bench(out: Path, *args: str) -> tuple[dict, str]:
    """`python -m app.bench <args> bench.out=<out>` as a user runs it: its report and stdout."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "app.bench", *args, f"bench.out={out}"],
                            cwd=out.parent, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    _check(report, time.perf_counter() - started)
    return report, result.stdout


def test_bench_fine_tuning_with_bucketing_counts_real_tokens(tmp_path):
    report, stdout = run_bench(tmp_path / "bench", *TINY, f"data.dir={tmp_path / 'missing'}",
                               "data.max_train_examples=256", "data.sequence_length=64",
                               "data.bucket_boundaries=[32,48]", *QUICK,
                               "bench.windows=2", "bench.min_window_steps=4")
    assert report["config"]["task"] == "classification"
    assert report["config"]["bucket_boundaries"] == [32, 48]
    assert len(report["window_seconds"]["app"]) == 2
    batches = report["first_window_batches"]
    # Bucket-cut batches: fewer padded tokens than full length, more than the real ones.
    assert batches["real_tokens"] < batches["padded_tokens"] < batches["examples"] * 64
    assert batches["real_flops"] < batches["padded_flops"]
    assert list(report["matmul_peak_flops_per_second"]) == ["float32"]
    assert "app / bare" in stdout


def test_bench_mfu_is_against_the_matmul_peak_of_the_compute_dtype(tmp_path):
    report, stdout = run_bench(tmp_path / "bench", *TINY, f"data.dir={tmp_path / 'missing'}",
                               "data.max_train_examples=64", "trainer.precision=mixed_bfloat16",
                               *QUICK)
    assert report["config"]["precision"] == "mixed_bfloat16"
    assert list(report["matmul_peak_flops_per_second"]) == ["bfloat16"]
    assert "matmul peak GFLOP/s          bfloat16" in stdout


def test_bench_predict_times_both_bucketing_modes(tmp_path):
    report, stdout = run_bench(tmp_path / "bench", "mode=predict", *TINY,
                               f"data.dir={tmp_path / 'missing'}", "data.max_train_examples=64",
                               "data.sequence_length=64", "bench.predict_copies=2",
                               "bench.predict_batch_size=32", *QUICK)
    assert report["examples"] == 2 * 500  # the synthetic dev.tsv, twice
    tokens = report["tokens"]
    assert tokens["bucketed"]["real_tokens"] == tokens["full_length"]["real_tokens"]
    assert tokens["bucketed"]["padded_tokens"] < tokens["full_length"]["padded_tokens"]
    assert tokens["full_length"]["padded_tokens"] == report["examples"] * 64
    assert "app bucketed / full length" in stdout


def test_bare_loop_receives_the_apps_batches():
    """Bucketed batches of every width come back from memory equal, with the app's spec."""
    import numpy as np
    import tensorflow as tf

    from app.bench.bare import in_memory, take_batches
    from app.data.pipeline import epoch_stream
    from app.models.flops import batch_flops

    count, length, batch = 100, 24, 8
    lengths = np.random.default_rng(0).integers(3, length + 1, count)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    features = {"token_ids": mask * 7, "segment_ids": 0 * mask, "padding_mask": mask}
    examples = tf.data.Dataset.from_tensor_slices((features, np.arange(count))).cache()
    stream = epoch_stream(examples, count, batch, 1000, seed=7, epochs=1,
                          bucket_boundaries=[8, 16])(0)
    flops = {"model": {"num_layers": 1, "embedding_dim": 4, "hidden_dim": 8,
                       "intermediate_dim": 16}}
    taken, stats = take_batches(iter(stream), 10, flops)
    expected = [tf.nest.map_structure(lambda t: t.numpy(), b) for b in stream.take(10)]
    dataset = in_memory(taken, stream.element_spec)
    assert dataset.element_spec == stream.element_spec
    got = [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset]
    assert len({b[0]["token_ids"].shape[1] for b in got}) > 1  # several widths
    for mine, theirs in zip(got, expected, strict=True):
        for a, b in zip(tf.nest.flatten(mine), tf.nest.flatten(theirs), strict=True):
            assert a.shape == b.shape and (a == b).all()
    assert stats.examples == sum(len(b[1]) for b in expected)
    assert stats.real_tokens == sum(int(b[0]["padding_mask"].sum()) for b in expected)
    assert stats.padded_tokens == sum(b[0]["token_ids"].size for b in expected)
    assert stats.padded_flops == sum(
        batch_flops(lengths=b[0]["padding_mask"].sum(1), width=b[0]["token_ids"].shape[1],
                    **flops)[0] for b in expected)


def test_bench_pretraining_on_synthetic_corpus(tmp_path):
    report, _ = run_bench(tmp_path / "bench", *TINY, "data=text_corpus",
                          f"data.dir={tmp_path / 'missing'}", "data.max_train_examples=128",
                          "data.sequence_length=64", "data.max_predictions=4", *QUICK)
    assert report["config"]["task"] == "pretraining"
