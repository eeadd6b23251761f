"""Strategies, precision and gradient accumulation: distributed training matches one device."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TINY, compose_config
from omegaconf import OmegaConf

from app.data.task import TaskSpec
from app.data.tokenizer import load_tokenizer
from app.models.classifier import build_task_model
from app.runs.layout import RunLayout
from app.train import train
from app.training.resume import all_states

REPO = Path(__file__).resolve().parents[1]
# No dropout, so every strategy computes the same function of the same batches.
EXACT = [*TINY, "model.dropout=0", "model.classifier_dropout=0", "trainer.deterministic=true",
         "trainer.batch_size=16", "trainer.epochs=1"]


def app_process(run_dir: Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "app", *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def run_to_end(process: subprocess.Popen, timeout: int = 400) -> str:
    """The process's output once it ends; killed if it outlives `timeout`."""
    try:
        return process.communicate(timeout=timeout)[0]
    finally:
        process.kill()


def finish(process: subprocess.Popen) -> None:
    output = run_to_end(process)
    assert process.returncode == 0, output[-4000:]


def history(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["history"]


def assert_same_losses(run_dir: Path, single: Path) -> None:
    """Train and eval losses equal one device's within 1e-4 (printed for the record)."""
    for key in ("loss", "val_loss"):
        got, want = np.array(history(run_dir)[key]), np.array(history(single)[key])
        print(f"{run_dir.name} {key}: {got} vs one device {want}, "
              f"max relative difference {np.max(np.abs(got - want) / np.abs(want)):.2e}")
        np.testing.assert_allclose(got, want, rtol=1e-4)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def reference(tmp_path, sentiment_dir):
    """A single-device run on the same global batch."""
    data = ["data=tsv", f"data.dir={sentiment_dir}"]
    run_dir = tmp_path / "single"
    finish(app_process(run_dir, *EXACT, *data, "strategy=cpu"))
    return data, run_dir


def reload_checkpoint(run_dir: Path) -> None:
    """The run's last checkpoint loads into a model built afresh from the run's config."""
    cfg = OmegaConf.load(run_dir / ".hydra/config.yaml")
    task = TaskSpec("classification", tuple(json.loads((run_dir / "labels.json").read_text())))
    tokenizer = load_tokenizer(run_dir / "tokenizer/spm.model")
    model = build_task_model(cfg.model, task, tokenizer.vocabulary_size())
    model.load_weights(run_dir / "checkpoints/last.weights.h5")
    exported = keras.saving.load_model(run_dir / "export/model.keras")
    for loaded, final in zip(model.get_weights(), exported.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, final)


def test_mirrored_on_two_cpu_devices_matches_one_device(tmp_path, reference):
    data, single = reference
    run_dir = tmp_path / "mirrored"
    finish(app_process(run_dir, *EXACT, *data, "strategy=mirrored", "strategy.cpu_devices=2"))
    env = json.loads((run_dir / "env.json").read_text())
    assert env["strategy"] == {"class": "MirroredStrategy", "num_replicas": 2}
    assert_same_losses(run_dir, single)
    reload_checkpoint(run_dir)


@pytest.mark.slow
def test_multi_worker_on_two_local_processes_matches_one_device(tmp_path, reference):
    data, single = reference
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(app_process(tmp_path / f"worker{index}", *EXACT, *data,
                                   "strategy=multi_worker", env={"TF_CONFIG": tf_config}))
    for worker in workers:
        finish(worker)
    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    env = json.loads((chief / "env.json").read_text())
    assert env["strategy"] == {"class": "CollectiveAllReduceStrategy", "num_replicas": 2}
    assert_same_losses(chief, single)
    assert sorted(p.name for p in other.iterdir()) == [".hydra", "train.log"]
    reload_checkpoint(chief)


def test_global_batch_must_divide_across_replicas(tmp_path, sentiment_dir):
    result = app_process(tmp_path / "run", *TINY, "data=tsv", f"data.dir={sentiment_dir}",
                         "strategy=mirrored", "strategy.cpu_devices=2", "trainer.batch_size=15")
    output = run_to_end(result)
    assert result.returncode != 0
    assert "`trainer.batch_size` must be divisible by the number of replicas (2)" in output


@pytest.mark.parametrize("address", ["grpc://127.0.0.1:1", "null"])
def test_tpu_without_a_tpu_fails_clearly(tmp_path, sentiment_dir, address):
    result = app_process(tmp_path / "run", *TINY, "data=tsv", f"data.dir={sentiment_dir}",
                         "strategy=tpu", f"strategy.tpu_address={address}")
    output = run_to_end(result, timeout=120)
    assert result.returncode != 0
    assert "no TPU is reachable" in output


def saved_states(run_dir: Path) -> dict[int, dict[str, np.ndarray]]:
    """The run's training states by step: each `model.variables` array (float ones only, so
    not the seed generators' counters), as app.training.resume saves them."""
    states = {}
    for path in all_states(RunLayout(run_dir).states):
        with np.load(path / "variables.npz", allow_pickle=False) as arrays:
            states[json.loads((path / "meta.json").read_text())["step"]] = {
                key: arrays[key] for key in arrays.files
                if key.startswith("model/") and arrays[key].dtype.kind == "f"}
    return states


def test_bfloat16_trains_on_cpu(tmp_path, sentiment_dir):
    cfg = compose_config(*TINY, "data=tsv", f"data.dir={sentiment_dir}", "trainer.epochs=1",
                         "trainer.precision=mixed_bfloat16")
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    values = [*metrics["history"]["loss"], *metrics["history"]["val_loss"],
              *metrics["final"].values()]
    assert values and all(math.isfinite(v) for v in values), metrics
    # The trained model as exported, loaded under the float32 default: each layer's dtype
    # policy comes from the saved config, i.e. from the model that trained.
    keras.config.set_dtype_policy("float32")
    try:
        model = keras.saving.load_model(run_dir / "export/model.keras", compile=False)
        assert model.dtype_policy.name == "mixed_bfloat16"
        # Every layer holding weights, nested ones included (Keras has no public walk).
        with_weights = [layer for layer in model._flatten_layers() if layer.weights]
        assert len(with_weights) > 10
        for layer in with_weights:
            assert (layer.compute_dtype, layer.variable_dtype) == ("bfloat16", "float32"), layer
        assert {v.dtype for v in model.weights} == {"float32"}
        # Its forward pass computes in bfloat16.
        features, _, _ = keras.utils.unpack_x_y_sample_weight(
            model.preprocessor(["a truly stunning film", "dull"]))
        outputs = model.backbone(features)
        assert {keras.backend.standardize_dtype(out.dtype) for out in outputs.values()} == {
            "bfloat16"}
    finally:
        keras.config.set_dtype_policy("float32")
    # The variables the optimizer updated stayed float32 (master weights), first to last.
    states = saved_states(run_dir)
    assert sorted(states) == [0, 192 // 16]  # the start and the end of one epoch
    assert {array.dtype for state in states.values() for array in state.values()} == {
        np.dtype("float32")}


# Plain SGD: an update proportional to the gradient, so a sum of the k gradients instead of
# their mean (or a learning-rate schedule counting batches instead of updates) changes every
# update, where Adam (update ~ m / sqrt(v)) is blind to the gradient's scale. No clipping or
# weight decay: global clipping would also hide a scale. SGD takes none of the Adam-family keys
# the optimizer schema always carries (beta_1, beta_2, epsilon), and that structured node
# allows no `~optimizer.beta_1`, so the composed config is made a plain one, as a saved
# .hydra/config.yaml is, with this optimizer node.
SGD = {"_target_": "keras.optimizers.SGD", "learning_rate": 0.5, "weight_decay": None,
       "global_clipnorm": None, "warmup_ratio": 0.0, "no_weight_decay": []}
RTOL, ATOL = 1e-3, 1e-7


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, sentiment_dir):
    common = [*EXACT, "trainer.deterministic=false", "data=tsv", f"data.dir={sentiment_dir}",
              "strategy=cpu", "data.max_train_examples=64",
              # One batch of 16 holds the examples of two batches of 8 only in file-shuffled
              # order: length buckets group each batch size's batches differently.
              "data.bucket_boundaries=[]"]
    states = {}
    for name, batch, steps in (("big", 16, 1), ("accumulated", 8, 2)):
        cfg = compose_config(*common, f"trainer.batch_size={batch}",
                             f"trainer.gradient_accumulation_steps={steps}")
        cfg = OmegaConf.create(OmegaConf.to_container(cfg))
        cfg.optimizer = SGD
        train(cfg, tmp_path / name)
        states[name] = saved_states(tmp_path / name)
    # 64 examples: 4 updates of one batch of 16, or of 2 accumulated batches of 8.
    assert sorted(states["big"]) == [0, 4] and sorted(states["accumulated"]) == [0, 8]
    start, big = states["big"][0], states["big"][4]
    same_start, accumulated = states["accumulated"][0], states["accumulated"][8]
    assert start.keys() == same_start.keys() == big.keys() == accumulated.keys()
    for key in start:  # the same seed built the same model
        np.testing.assert_array_equal(same_start[key], start[key])
    big_updates = np.concatenate([(big[k] - start[k]).ravel() for k in start])
    accumulated_updates = np.concatenate([(accumulated[k] - start[k]).ravel() for k in start])
    # The tolerance is far below the updates: a doubled update (a sum of 2 gradients) would be
    # off by the update itself.
    assert np.abs(big_updates).max() > 1e3 * ATOL
    assert not np.allclose(2 * big_updates, big_updates, rtol=RTOL, atol=ATOL)
    for key in start:
        np.testing.assert_allclose(accumulated[key] - start[key], big[key] - start[key],
                                   rtol=RTOL, atol=ATOL, err_msg=key)
    np.testing.assert_allclose(np.linalg.norm(accumulated_updates - big_updates)
                               / np.linalg.norm(big_updates), 0, atol=1e-4)
