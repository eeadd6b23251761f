"""Shared fixtures: the real conf/ composed with overrides, and tiny data sets written per test."""

import os
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from app.config.schema import register_configs
from app.data import synthetic
from app.runtime.cpu import tune_cpu

tune_cpu()  # as every command does, before TensorFlow starts: tests run what users run
# Each pytest-xdist worker gets its share of the cores for TensorFlow's thread pools: two
# processes with a pool of every core each oversubscribe them (two albert_small fine-tunes with
# one thread each made 1.41x the examples/s of one with two threads, on 2 cores).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    for _pool in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(_pool, str(max(1, (os.cpu_count() or 1) // _WORKERS)))

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"

# A model, vocabulary and data cap small enough for a few seconds of training on one CPU core.
TINY = [
    "model=albert_tiny",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.embedding_dim=16",
    "model.hidden_dim=32",
    "model.intermediate_dim=64",
    "data.sequence_length=24",
    "tokenizer.vocab_size=120",
    "trainer.epochs=2",
    "trainer.batch_size=16",
    "trainer.log_every_n_steps=4",
    "strategy=cpu",
]


def compose_config(*overrides: str, config_name: str = "train", **kwargs):
    """Compose conf/<config_name>.yaml (the package's app.conf) with overrides, as the command
    would (the hydra node excluded unless `return_hydra_config=True`)."""
    register_configs()
    with initialize_config_module("app.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), **kwargs)


def run_command(monkeypatch, main, *args: str):
    """A console script's `main()` in this process with `sys.argv` set, as a user runs it.

    Returns the SystemExit's code (a string for a one-line error), or 0 when it returned.
    """
    monkeypatch.setattr(sys, "argv", ["albert-command", *args])
    try:
        main()
    except SystemExit as stop:
        return stop.code
    return 0


def write_splits(out: Path, header: tuple[str, ...], rows, train_size: int, seed: int) -> Path:
    """train.tsv with `train_size` rows and dev.tsv with a quarter as many, other seeds."""
    synthetic.write_tsv(out / "train.tsv", header, rows(train_size, seed=seed))
    synthetic.write_tsv(out / "dev.tsv", header, rows(train_size // 4, seed=seed + 1))
    return out


@pytest.fixture(scope="session", autouse=True)
def tensorflow_logs_on_the_process_stderr():
    """TensorFlow's and absl's log handlers bind to the `sys.stderr` of their first use: inside
    a test that is pytest's capture stream, closed after it, and the next log line kills the
    worker ("lost sys.stderr"; seen with test_layout.py then test_report.py in one process).
    The process's own stderr stays open (and fd capture still collects it)."""
    import tensorflow as tf
    from absl import logging as absl_logging

    for handler in [*tf.get_logger().handlers, absl_logging.get_absl_handler().python_handler]:
        handler.setStream(sys.__stderr__)


@pytest.fixture
def sentiment_dir(tmp_path: Path) -> Path:
    """Single-sentence classification with string labels: columns sentence, label."""
    return write_splits(tmp_path / "sentiment", ("sentence", "label"), synthetic.sentiment_rows,
                        192, seed=1)


@pytest.fixture
def pair_dir(tmp_path: Path) -> Path:
    """Sentence-pair classification: columns sentence1, sentence2, label."""
    return write_splits(tmp_path / "pairs", ("sentence1", "sentence2", "label"),
                        synthetic.pair_rows, 160, seed=3)


@pytest.fixture
def regression_dir(tmp_path: Path) -> Path:
    """Regression with float scores 0-4: columns sentence, score."""
    return write_splits(tmp_path / "scores", ("sentence", "score"), synthetic.regression_rows,
                        160, seed=5)


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test where it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared data set {name!r} not found at {path}")
    return path
