"""Resume of a pretraining run from prepared shards: exact after a SIGKILL, reading no skipped
shard, and refused when the prepared corpus or the worker count changed."""

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from test_distributed import app_process, free_ports
from test_prepare import SEQUENCE_LENGTH, prepared_overrides, prepared_run_config, settings
from test_pretraining_data import synthetic_documents, write_corpus
from test_resume import (
    assert_same_outcome,
    finish,
    outcome,
    saved_steps,
    start,
    wait_for_step,
)

from app.data.pretraining.shard_format import MANIFEST_FILE
from app.data.pretraining.shard_writer import PrepareSettings, prepare_corpus
from app.data.pretraining.shards import (
    SOURCE_FILE,
    open_prepared,
    pipeline_steps,
    pipeline_stream,
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
    # The TrainingData app.train resumes through.
    data = task.build_pipelines(tf.distribute.get_strategy())
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


def start_workers(run_dirs: list[Path], *args: str) -> list[subprocess.Popen]:
    """Two loopback MultiWorkerMirroredStrategy workers (worker 0 is the chief)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    return [app_process(run_dir, *args, "strategy=multi_worker", env={"TF_CONFIG": json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}})})
        for index, run_dir in enumerate(run_dirs)]


def assert_close_outcome(run_dir: Path, reference: Path) -> None:
    """Metrics and exported weights of two 2-worker runs agree within float tolerance."""
    (metrics, weights), (expected, expected_weights) = outcome(run_dir), outcome(reference)
    for name, value in expected["final"].items():
        np.testing.assert_allclose(metrics["final"][name], value, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(metrics["history"]["val_loss"], expected["history"]["val_loss"],
                               rtol=1e-5)
    for got, want in zip(weights, expected_weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_workers_from_shards_killed_mid_epoch_resume_to_the_uninterrupted_outcome(
        prepared, tmp_path):
    args = [a for a in run_args(prepared, tmp_path) if not a.startswith("hydra.run.dir")]
    steps = pipeline_steps(open_prepared(prepared, SEQUENCE_LENGTH), 16, 2)
    reference = [tmp_path / "reference0", tmp_path / "reference1"]
    for process in start_workers(reference, *args):
        finish(process)
    assert saved_steps(reference[0])[-1] == 2 * steps
    assert json.loads((reference[0] / SOURCE_FILE).read_text())["workers"] == 2

    chief = tmp_path / "chief"
    workers = start_workers([chief, tmp_path / "worker"], *args)
    wait_for_step(workers[0], chief, steps + 3)  # inside the second epoch
    for process in workers:
        process.kill()
        process.wait()
    killed_at = saved_steps(chief)[-1]
    assert steps < killed_at < 2 * steps and killed_at % steps
    # Both resume from the chief's folder; the other worker logs into a new folder of its own.
    resumed = start_workers([chief, tmp_path / "worker-resumed"], f"resume={chief}")
    outputs = [finish(process) for process in resumed]
    for output in outputs:
        assert re.search(rf"Resumed from {re.escape(str(chief))}/checkpoints/state/step-0*"
                         rf"{killed_at} \(step {killed_at}\)", output), output[-3000:]
    assert json.loads((chief / "status.json").read_text())["status"] == "completed"
    assert_close_outcome(chief, reference[0])
