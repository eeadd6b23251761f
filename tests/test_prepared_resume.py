"""Resume of a pretraining run from prepared shards: exact after a SIGKILL, reading no skipped
shard, and refused when the prepared corpus or the worker count changed."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from test_prepare import prepared_overrides, prepared_run_config, settings
from test_pretraining_data import synthetic_documents, write_corpus
from test_resume import assert_same_outcome, finish, saved_steps, start, wait_for_step

from app.data.pretraining.shards import (
    MANIFEST_FILE,
    SOURCE_FILE,
    PrepareSettings,
    pipeline_stream,
    prepare_corpus,
)
from app.data.tokenizer import train_sentencepiece
from app.errors import ConfigError
from app.runs.layout import RunLayout
from app.tasks.pretraining import Pretraining
from app.train import train
from app.training.fit import TrainingDiverged
from app.training.resume import resumed_config

STEPS_PER_EPOCH = 36  # 572 training pairs / batch 16


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("raw") / "a.txt",
                        synthetic_documents(120, seed=21))


@pytest.fixture(scope="module")
def proto(tmp_path_factory) -> bytes:
    sentences = [s for document in synthetic_documents(120, seed=21) for s in document]
    return train_sentencepiece(sentences, tmp_path_factory.mktemp("spm") / "spm", 80,
                               hard_vocab_limit=False).read_bytes()


@pytest.fixture(scope="module")
def prepared(corpus_file, proto, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "corpus"
    manifest = prepare_corpus(settings([corpus_file]), proto, out, num_proc=1)
    assert manifest["splits"]["train"]["examples"] // 16 + 1 == STEPS_PER_EPOCH
    return out


def batch_arrays(batches: tf.data.Dataset) -> list[list[np.ndarray]]:
    return [[np.asarray(leaf) for leaf in tf.nest.flatten(batch)] for batch in batches]


def test_a_resumed_runs_batches_open_no_shard_of_the_groups_before(prepared, tmp_path):
    folder = tmp_path / "corpus"
    shutil.copytree(prepared, folder)
    cfg = prepared_run_config(folder)
    layout = RunLayout(tmp_path / "run")
    task = Pretraining(cfg)
    task.read_data(layout)
    task.build_tokenizer(layout)
    data = task.build_pipelines()  # the TrainingData app.train resumes through
    assert data.steps_per_epoch == STEPS_PER_EPOCH
    full = batch_arrays(data.batches(0))
    assert len(full) == cfg.trainer.epochs * STEPS_PER_EPOCH
    # The stream the task built, by its settings: where step `start` lies.
    stream = pipeline_stream(task.corpus, cfg.trainer.batch_size, cfg.data.shuffle_buffer,
                             cfg.data.shard_group_size, cfg.seed, None)
    start = STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2 + 1
    epoch, group, skip = stream.position(start)
    order = stream.order(epoch)
    size = cfg.data.shard_group_size
    members = order[group * size:(group + 1) * size]
    assert epoch == 1 and group > 0
    assert skip < stream.counts[members].sum()  # only a remainder of one group is skipped
    for index in order[:group * size]:  # every shard of the groups before: gone
        Path(stream.paths[index]).unlink()
    resumed = batch_arrays(data.batches(start))
    assert len(resumed) == len(full) - start
    for got, want in zip(resumed, full[start:], strict=True):
        for left, right in zip(got, want, strict=True):
            np.testing.assert_array_equal(left, right)


def diverged_run(folder: Path, run_dir: Path) -> None:
    """A run that failed at its first steps, its start state saved: resumable."""
    with pytest.raises(TrainingDiverged):
        train(prepared_run_config(folder, "optimizer=adam", "optimizer.learning_rate=1e12",
                                  "optimizer.global_clipnorm=null", "trainer.epochs=1"), run_dir)
    assert saved_steps(run_dir)


def test_a_resume_with_another_prepared_corpus_or_worker_count_is_refused(
        prepared, corpus_file, proto, tmp_path):
    folder, run_dir = tmp_path / "corpus", tmp_path / "run"
    shutil.copytree(prepared, folder)
    diverged_run(folder, run_dir)
    record = json.loads((run_dir / SOURCE_FILE).read_text())
    assert record == {"folder": str(folder), "workers": 1, "manifest_sha256": hashlib.sha256(
        (folder / MANIFEST_FILE).read_bytes()).hexdigest()}
    states = saved_steps(run_dir)

    shutil.rmtree(folder)  # prepared again in its place with another seed: other pairs
    reseeded = settings([corpus_file])
    prepare_corpus(PrepareSettings(reseeded.files, reseeded.data, 8, reseeded.shard_size_mb),
                   proto, folder)
    with pytest.raises(ConfigError, match=r"`resume` refused: the prepared corpus .* changed "
                                          r"since the run started \(manifest.json sha256"):
        train(resumed_config(str(run_dir)), run_dir)

    shutil.rmtree(folder)
    shutil.copytree(prepared, folder)
    (run_dir / SOURCE_FILE).write_text(json.dumps({**record, "workers": 2}))  # started on 2
    with pytest.raises(ConfigError, match=r"the run started with 2 workers .* resumes with 1"):
        train(resumed_config(str(run_dir)), run_dir)
    assert saved_steps(run_dir) == states


def run_args(folder: Path, run_dir: Path) -> list[str]:
    # Dropout on, 2 epochs, a state every 5 steps (not dividing the 36 steps of an epoch).
    return [*prepared_overrides(folder), "trainer.deterministic=true",
            "trainer.checkpoint_every_n_steps=5", "logger=none", f"hydra.run.dir={run_dir}"]


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [10, 50])
def test_sigkill_then_resume_from_prepared_shards_matches_uninterrupted_run(
        prepared, tmp_path, kill_after):
    reference = tmp_path / "reference"
    finish(start(*run_args(prepared, reference)))
    assert saved_steps(reference)[-1] == 2 * STEPS_PER_EPOCH

    run_dir = tmp_path / "run"
    process = start(*run_args(prepared, run_dir))
    wait_for_step(process, run_dir, kill_after)
    process.kill()
    process.wait()
    killed_at = saved_steps(run_dir)[-1]
    assert killed_at < 2 * STEPS_PER_EPOCH and killed_at % STEPS_PER_EPOCH
    output = finish(start(f"resume={run_dir}"))
    assert f"step {killed_at}" in output
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert_same_outcome(run_dir, reference)
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    expected = json.loads((reference / "metrics.json").read_text())["history"]
    # Every evaluation; the training metrics of the interrupted epoch average only the steps
    # after the resume.
    assert {k: v for k, v in history.items() if k.startswith("val_")} == {
        k: v for k, v in expected.items() if k.startswith("val_")}
