"""`albert-bench` end to end on tiny models (no timing asserts)."""

import json
import math
import subprocess
import sys
from pathlib import Path

TINY = [
    "model.num_layers=2", "model.num_heads=2", "model.embedding_dim=16", "model.hidden_dim=32",
    "model.intermediate_dim=64", "data.sequence_length=24", "tokenizer.vocab_size=120",
    "trainer.batch_size=16", "strategy=cpu",
]
QUICK = ["bench.windows=1", "bench.window_seconds=0.01", "bench.min_window_steps=1",
         "bench.matmul_size=128", "bench.matmul_seconds=0.1"]


def _check(written: dict) -> None:
    assert written["flops_per_step"] > 0
    for loop in ("app", "bare_keras_hub"):
        assert written[loop]["examples_per_second"] > 0
        assert written[loop]["mfu"] > 0 and math.isfinite(written[loop]["mfu"])
    assert written["app_over_bare"] > 0
    assert written["pipeline"]["cached_examples_per_second"] > 0
    assert written["startup_to_first_step_seconds"] > 0
    assert written["peak_rss_mb"] > 0


def run_bench(out: Path, *args: str) -> tuple[dict, str]:
    """`python -m app.bench <args> bench.out=<out>` as a user runs it: its report and stdout."""
    result = subprocess.run([sys.executable, "-m", "app.bench", *args, f"bench.out={out}"],
                            cwd=out.parent, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    _check(report)
    return report, result.stdout


def test_bench_fine_tuning_on_synthetic_data(tmp_path):
    report, stdout = run_bench(tmp_path / "bench", *TINY, f"data.dir={tmp_path / 'missing'}",
                               "data.max_train_examples=256", *QUICK)
    assert report["config"]["task"] == "classification"
    assert "app / bare" in stdout


def test_bench_pretraining_on_synthetic_corpus(tmp_path):
    report, _ = run_bench(tmp_path / "bench", *TINY, "data=text_corpus",
                          f"data.dir={tmp_path / 'missing'}", "data.max_train_examples=128",
                          "data.max_predictions=4", *QUICK)
    assert report["config"]["task"] == "pretraining"


def test_length_bucketing_keeps_epochs_exact_and_resumable():
    """data.bucket_boundaries: same examples and batch count per epoch, few shapes, resumable."""
    import numpy as np
    import tensorflow as tf

    from app.data.pipeline import epoch_stream

    count, length, batch = 300, 24, 8
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, length + 1, count)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    features = {"token_ids": mask * 7, "segment_ids": 0 * mask, "padding_mask": mask}
    examples = tf.data.Dataset.from_tensor_slices((features, np.arange(count))).cache()
    stream = epoch_stream(examples, count, batch, 1000, seed=7, epochs=2,
                          bucket_boundaries=[8, 16])
    batches = [(int(x["token_ids"].shape[1]), y.numpy().tolist()) for x, y in stream(0)]
    assert len(batches) == 2 * math.ceil(count / batch)
    assert sorted(i for _, ids in batches[:38] for i in ids) == list(range(count))
    assert {width for width, _ in batches} == {8, 16, 24}
    assert all(lengths[ids].max() <= width for width, ids in batches)
    resumed = [(int(x["token_ids"].shape[1]), y.numpy().tolist()) for x, y in stream(5)]
    assert resumed == batches[5:]
