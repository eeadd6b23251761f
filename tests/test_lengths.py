"""Sequence length and bucket boundaries chosen from the data: the choice, its record in the run
folder (used by evaluation, evaluate, predict, export and resume), padding efficiency, and
the refusals of bad lengths."""

import itertools
import json
import math
import random
import signal
from pathlib import Path

import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, compose_config, write_splits
from omegaconf import OmegaConf
from tagging_data import tagged_dir
from test_resume import assert_same_outcome, finish, saved_steps, start, wait_for_step

from app.config.validate import validate
from app.data import synthetic
from app.data.lengths import (
    BUCKETS,
    MULTIPLE,
    choose_boundaries,
    choose_sequence_length,
    quantile,
    truncated,
)
from app.data.pipeline import epoch_stream, packed_lengths, tokenized
from app.errors import PREEMPTED_EXIT_CODE, ConfigError
from app.evaluate import evaluate
from app.models.backbone import position_table
from app.predict import predict_texts
from app.runs.layout import RunLayout
from app.runs.read import open_run
from app.tasks import task_for
from app.tasks.base import choose_lengths
from app.tasks.inference import load_model
from app.train import train

# TINY without its fixed length: the lengths come from the data.
DEFAULTS = [o for o in TINY if not o.startswith("data.sequence_length")]


# === The choice (pure functions) ===

@pytest.mark.parametrize("seed", range(5))
def test_sequence_length_is_the_shortest_multiple_of_8_holding_99_percent(seed):
    rng = random.Random(seed)
    lengths = [int(rng.lognormvariate(3, 0.6)) + 2 for _ in range(rng.randint(50, 3000))]
    chosen = choose_sequence_length(lengths, cap=512)
    assert chosen % MULTIPLE == 0
    assert truncated(lengths, chosen) <= 0.01 * len(lengths)
    assert truncated(lengths, chosen - MULTIPLE) > 0.01 * len(lengths) or chosen == MULTIPLE


def test_sequence_length_is_capped_by_the_position_table_and_floored_by_minimum():
    assert choose_sequence_length([700] * 10, cap=512) == 512
    assert choose_sequence_length([700] * 10, cap=100) == 100
    assert choose_sequence_length([3] * 10, cap=512) == MULTIPLE
    assert choose_sequence_length([3] * 10, cap=512, minimum=30) == 32
    assert choose_sequence_length([10] * 98 + [300, 300], cap=512) == 304  # 2% too long
    assert choose_sequence_length([10] * 99 + [300], cap=512) == 16  # 1% may be cut
    with pytest.raises(ValueError):
        choose_sequence_length([], cap=512)


def padded(lengths: list[int], boundaries, sequence_length: int) -> int:
    """Tokens after padding each example to the smallest boundary holding it (else the length)."""
    return sum(next((b for b in boundaries if b >= length), sequence_length)
               for length in (min(n, sequence_length) for n in lengths))


def test_boundaries_are_few_ascending_multiples_of_8_below_the_length():
    rng = random.Random(0)
    lengths = [rng.randint(3, 200) for _ in range(1000)]
    boundaries = choose_boundaries(lengths, 128)
    assert boundaries == sorted(set(boundaries)) and 1 <= len(boundaries) <= BUCKETS
    assert all(b % MULTIPLE == 0 and b < 128 for b in boundaries)
    assert choose_boundaries([10] * 50, 16) == []  # one length: one shape, no buckets
    assert choose_boundaries([5] * 50 + [20] * 50, 32) == [8, 24]


@pytest.mark.parametrize("seed", range(8))
def test_boundaries_pad_least_of_all_choices(seed):
    rng = random.Random(seed)
    sequence_length = rng.choice([24, 40, 64, 72])
    lengths = [int(rng.paretovariate(1.5) * rng.randint(3, 12)) for _ in range(rng.randint(1, 300))]
    candidates = range(MULTIPLE, sequence_length, MULTIPLE)
    least = min(padded(lengths, subset, sequence_length)
                for size in range(BUCKETS + 1)
                for subset in itertools.combinations(candidates, size))
    boundaries = choose_boundaries(lengths, sequence_length)
    assert len(boundaries) <= BUCKETS
    assert padded(lengths, boundaries, sequence_length) == least


# === A run with the defaults ===

@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny run that sets neither data.sequence_length nor data.bucket_boundaries."""
    root = tmp_path_factory.mktemp("lengths")
    data = write_splits(root / "data", ("sentence", "label"), synthetic.sentiment_rows, 192, 1)
    cfg = compose_config(*DEFAULTS, "data=tsv", f"data.dir={data}", "trainer.epochs=1")
    assert cfg.data.sequence_length is None and cfg.data.bucket_boundaries is None
    metrics = train(cfg, root / "run")
    return root / "run", metrics


def test_a_run_records_the_chosen_lengths_and_its_padding(default_run):
    run_dir, metrics = default_run
    record = json.loads(RunLayout(run_dir).lengths.read_text())
    assert metrics["lengths"] == record
    assert record["chosen"] == ["padding", "sequence_length"]
    length = record["sequence_length"]
    assert length % MULTIPLE == 0 and record["coverage"] >= 0.99 and record["examples"] == 192
    assert (record["padding"], record["bucket_boundaries"]) == ("longest", None)
    saved = OmegaConf.load(run_dir / "config.yaml").data  # what evaluate, predict, resume read
    assert (saved.sequence_length, saved.padding, saved.bucket_boundaries) == \
        (length, "longest", None)
    padding = metrics["padding"]
    assert 0 < padding["real_tokens"] <= padding["padded_tokens"]
    assert padding["ratio"] == pytest.approx(padding["real_tokens"] / padding["padded_tokens"])


def test_export_evaluate_and_predict_use_the_recorded_length(default_run):
    run_dir, metrics = default_run
    length = metrics["lengths"]["sequence_length"]
    run = open_run(run_dir)
    assert load_model(run).preprocessor.sequence_length == length  # export/model.keras
    assert load_model(run, "best").preprocessor.sequence_length == length  # rebuilt from config
    preset = keras_hub.models.AlbertTextClassifier.from_preset(str(run_dir / "export/preset"))
    assert preset.preprocessor.sequence_length == length
    record = evaluate(run_dir, progress=False)
    assert record["metrics"] == pytest.approx(
        {name.removeprefix("val_"): value for name, value in metrics["final"].items()}, abs=1e-5)
    texts = ["a great film ."] * 3
    assert len(predict_texts(run_dir, texts)) == 3


def padding_of(cfg, run_dir: Path) -> dict:
    """The padding of a config's training batches, through the flow's own steps."""
    task = task_for(cfg)
    task.read_data(RunLayout(run_dir))
    task.build_tokenizer(RunLayout(run_dir))
    task.build_pipelines(tf.distribute.get_strategy())
    return task.extra_metrics["padding"]


def test_longest_pads_least_then_buckets_then_full_length(tmp_path, sentiment_dir):
    common = [*DEFAULTS, "data=tsv", f"data.dir={sentiment_dir}"]
    longest = padding_of(compose_config(*common), tmp_path / "longest")
    cfg = compose_config(*common, "data.padding=buckets")
    buckets = padding_of(cfg, tmp_path / "buckets")
    assert cfg.data.bucket_boundaries, "boundaries chosen from the data"
    cfg = compose_config(*common, "data.bucket_boundaries=[]")
    full = padding_of(cfg, tmp_path / "full")
    assert (cfg.data.padding, cfg.data.bucket_boundaries) == ("buckets", [])
    assert cfg.data.sequence_length % MULTIPLE == 0
    assert full["real_tokens"] == buckets["real_tokens"] == longest["real_tokens"]
    assert full["padded_tokens"] == 192 * cfg.data.sequence_length  # every batch full length
    assert longest["ratio"] >= buckets["ratio"] > full["ratio"]


@pytest.mark.parametrize("overrides,padding,boundaries", [
    ([], "longest", None),
    (["trainer.jit_compile=true"], "buckets", "chosen"),  # XLA: a program per shape
    (["trainer.jit_compile=auto"], "buckets", "chosen"),
    (["data.bucket_boundaries=[16]"], "buckets", [16]),  # set: they win
    (["data.padding=longest", "trainer.jit_compile=true"], "longest", None),
    (["data.task=multilabel"], "buckets", []),  # length-sorted batches group label counts
    (["data.task=token_classification"], "buckets", "chosen"),
])
def test_padding_is_chosen_for_the_compiler_and_the_task(tmp_path, overrides, padding,
                                                         boundaries):
    cfg = compose_config(*DEFAULTS, "data=tsv", f"data.dir={tmp_path}", *overrides)
    choose_lengths(cfg, RunLayout(tmp_path / "run"), lambda: [5] * 50 + [20] * 50)
    assert cfg.data.padding == padding
    if boundaries == "chosen":
        assert cfg.data.bucket_boundaries == choose_boundaries([5] * 50 + [20] * 50,
                                                               cfg.data.sequence_length)
    else:
        assert cfg.data.bucket_boundaries == boundaries
    saved = OmegaConf.load(tmp_path / "run/config.yaml").data
    assert (saved.padding, saved.bucket_boundaries) == (cfg.data.padding,
                                                         cfg.data.bucket_boundaries)


def masked_examples(count: int, length: int) -> tuple[np.ndarray, tf.data.Dataset]:
    """Each example's length (3..length) and cached (features, example index) examples."""
    lengths = np.random.default_rng(0).integers(3, length + 1, count)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    features = {"token_ids": mask * 7, "segment_ids": 0 * mask, "padding_mask": mask}
    return lengths, tf.data.Dataset.from_tensor_slices((features, np.arange(count))).cache()


def test_length_bucketing_keeps_epochs_exact_and_resumable():
    """data.bucket_boundaries: same examples and batch count per epoch, few shapes, resumable."""
    count, length, batch = 300, 24, 8
    lengths, examples = masked_examples(count, length)
    stream = epoch_stream(examples, count, batch, 1000, seed=7, epochs=2,
                          bucket_boundaries=[8, 16])
    batches = [(int(x["token_ids"].shape[1]), y.numpy().tolist()) for x, y in stream(0)]
    assert len(batches) == 2 * math.ceil(count / batch)
    assert sorted(i for _, ids in batches[:38] for i in ids) == list(range(count))
    assert {width for width, _ in batches} == {8, 16, 24}
    assert all(lengths[ids].max() <= width for width, ids in batches)
    # A bucket's batches mix its lengths (not one narrow range each, as sorting by length
    # would give): labels that follow length must not make label-pure batches.
    spans = [np.ptp(lengths[ids]) for width, ids in batches if width == 24 and len(ids) == batch
             and lengths[ids].min() > 16]
    assert len(spans) > 5 and np.mean(spans) > 4, spans
    resumed = [(int(x["token_ids"].shape[1]), y.numpy().tolist()) for x, y in stream(5)]
    assert resumed == batches[5:]


def test_longest_padding_cuts_each_batch_to_its_longest_and_resumes_exactly():
    count, length, batch = 300, 24, 8
    lengths, examples = masked_examples(count, length)
    stream = epoch_stream(examples, count, batch, 1000, seed=7, epochs=2, padding="longest")
    batches = [(int(x["token_ids"].shape[1]), y.numpy().tolist()) for x, y in stream(0)]
    steps = math.ceil(count / batch)
    assert len(batches) == 2 * steps
    assert sorted(i for _, ids in batches[:steps] for i in ids) == list(range(count))
    assert all(lengths[ids].max() == width for width, ids in batches)
    # Ordered by length: the batches of an epoch (one window here) hold disjoint length ranges.
    ranges = sorted((lengths[ids].min(), lengths[ids].max()) for _, ids in batches[:steps])
    assert all(high <= low for (_, high), (low, _) in itertools.pairwise(ranges))
    widths = [width for width, _ in batches[:steps]]
    assert widths != sorted(widths)  # the batches themselves come in shuffled order
    resumed = [(int(x["token_ids"].shape[1]), y.numpy().tolist()) for x, y in stream(5)]
    assert resumed == batches[5:]


def test_packed_lengths_are_what_the_preprocessor_packs_pairs_included(tmp_path, pair_dir):
    cfg = compose_config(*DEFAULTS, "data=tsv", f"data.dir={pair_dir}",
                         "data.text_column=sentence1", "data.text_pair_column=sentence2",
                         "data.sequence_length=16",  # short enough to truncate some pairs
                         "data.padding=buckets")  # boundaries chosen: the lengths are counted
    task = task_for(cfg)
    task.read_data(RunLayout(tmp_path))
    task.build_tokenizer(RunLayout(tmp_path))
    lengths = packed_lengths(task.train_split, task.tokenizer)
    packed = [int(features["padding_mask"].numpy().sum())
              for features, _ in tokenized(task.train_split, task.preprocessor)]
    assert packed == [min(length, 16) for length in lengths]
    assert any(length > 16 for length in lengths)
    assert task.extra_metrics["lengths"]["longer"] == truncated(lengths, 16)


def test_token_classification_chooses_its_window_length(tmp_path):
    data = tagged_dir(tmp_path / "data", "en")
    cfg = compose_config(*DEFAULTS, "data=conll", f"data.dir={data}")
    task = task_for(cfg)
    task.read_data(RunLayout(tmp_path / "run"))
    task.build_tokenizer(RunLayout(tmp_path / "run"))
    record = task.extra_metrics["lengths"]
    assert record["sequence_length"] == cfg.data.sequence_length
    assert cfg.data.sequence_length >= quantile(task.sentence_lengths(), 0.99)
    assert record["examples"] == len(task.train_sentences)
    data_pipeline = task.build_pipelines(tf.distribute.get_strategy())
    assert data_pipeline.num_train >= len(task.train_sentences)
    assert 0 < task.extra_metrics["padding"]["ratio"] <= 1


def test_a_shorter_preset_position_table_caps_the_length(tmp_path):
    backbone = keras_hub.models.AlbertBackbone(
        vocabulary_size=50, num_layers=1, num_heads=1, embedding_dim=8, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=24)
    backbone.save_to_preset(str(tmp_path / "preset"))
    model = compose_config(*DEFAULTS, f"model.preset={tmp_path / 'preset'}").model
    assert position_table(model) == 24
    assert choose_sequence_length([100] * 10, position_table(model)) == 24


# === Resume ===

@pytest.mark.slow
def test_a_resume_reuses_the_chosen_lengths_and_is_step_exact(tmp_path):
    data = write_splits(tmp_path / "data", ("sentence", "label"), synthetic.sentiment_rows,
                        208, 11)  # 13 steps an epoch
    args = [*DEFAULTS, "data=tsv", f"data.dir={data}", "trainer.deterministic=true",
            "trainer.epochs=2", "trainer.checkpoint_every_n_steps=4", "logger=none"]
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    finish(start(*args, f"hydra.run.dir={reference}"))
    process = start(*args, f"hydra.run.dir={run_dir}")
    wait_for_step(process, run_dir, 4)
    process.send_signal(signal.SIGTERM)
    finish(process, expected=PREEMPTED_EXIT_CODE)
    assert saved_steps(run_dir)[-1] < 26
    chosen = (run_dir / "lengths.json").read_text()
    output = finish(start(f"resume={run_dir}"))
    assert "from the data" not in output  # the saved values, not chosen again
    assert (run_dir / "lengths.json").read_text() == chosen
    assert json.loads((run_dir / "metrics.json").read_text())["lengths"] == json.loads(chosen)
    assert_same_outcome(run_dir, reference)


# === Bad input ===

@pytest.mark.parametrize("overrides,message", [
    (["data.sequence_length=600"],
     "`data.sequence_length` must be <= `model.max_sequence_length` (512). Received: 600"),
    (["data.bucket_boundaries=[32,16]"], "`data.bucket_boundaries` must be ascending lengths"),
    (["data.sequence_length=32", "data.bucket_boundaries=[16,48]"],
     "below `data.sequence_length` (32). Received: [16, 48]"),
    (["data.padding=shortest"],
     "`data.padding` must be one of [None, 'longest', 'buckets']. Received: 'shortest'"),
])
def test_bad_lengths_are_one_line_errors(sentiment_dir, overrides, message):
    cfg = compose_config(*DEFAULTS, "data=tsv", f"data.dir={sentiment_dir}", *overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_pretraining_needs_a_set_length():
    cfg = compose_config("data=text_corpus", "data.sequence_length=null")
    with pytest.raises(ConfigError, match="must be set for pretraining"):
        validate(cfg)
