"""Run callbacks: full-split evaluation, progress lines, HParams, and configured Keras callbacks."""

import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf
from tensorboard.plugins.hparams import api as hparams_api

from app.data.task import TaskSpec
from app.errors import ConfigError
from app.instantiate import instantiate
from app.metrics import evaluate_predictions

log = logging.getLogger(__name__)


class FullEvaluation(keras.callbacks.Callback):
    """Evaluates on the whole eval split at each epoch end and adds `val_*` entries to the logs.

    Keras' validation computes compiled metrics only; F1, MCC and correlations need all
    predictions at once, so this callback predicts once and derives every metric (loss included).
    It must come before callbacks that read `val_*` (checkpoints, TensorBoard).
    """

    def __init__(self, dataset: tf.data.Dataset, targets: np.ndarray, task: TaskSpec, loss):
        super().__init__()
        self.dataset = dataset
        self.targets = targets
        self.task = task
        self.loss = loss
        self.latest: dict[str, float] = {}

    def on_epoch_end(self, epoch, logs=None):
        outputs = self.model.predict(self.dataset, verbose=0).astype("float32")
        loss = float(keras.ops.convert_to_numpy(self.loss(self.targets, outputs)))
        metrics = {"loss": loss, **evaluate_predictions(self.task, self.targets, outputs)}
        self.latest = {f"val_{name}": value for name, value in metrics.items()}
        if logs is not None:
            logs.update(self.latest)


class CompiledEvaluation(keras.callbacks.Callback):
    """Evaluates the compiled metrics on a dataset at each epoch end, as `val_*` log entries.

    Like `fit(validation_data=...)`, but as a callback with `.latest`, the same shape as
    FullEvaluation, so every task is evaluated and logged the same way.
    """

    def __init__(self, dataset: tf.data.Dataset):
        super().__init__()
        self.dataset = dataset
        self.latest: dict[str, float] = {}

    def evaluate(self, model: keras.Model) -> dict[str, float]:
        """The metrics of `model` on the dataset, named `val_*`."""
        results = model.evaluate(self.dataset, return_dict=True, verbose=0)
        return {f"val_{name}": float(value) for name, value in results.items()}

    def on_epoch_end(self, epoch, logs=None):
        self.latest = self.evaluate(self.model)
        if logs is not None:
            logs.update(self.latest)


class ProgressLog(keras.callbacks.Callback):
    """Log lines every `every_n_steps` steps and per epoch: loss and the other training metrics
    (running means over the epoch), learning rate, examples/s."""

    def __init__(self, batch_size: int, steps_per_epoch: int, epochs: int, every_n_steps: int):
        super().__init__()
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.every_n_steps = every_n_steps
        self.train_seconds = 0.0
        self.epochs_run = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epoch_start = time.perf_counter()
        self.last_logged = 0

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1
        if step - self.last_logged < self.every_n_steps and step != self.steps_per_epoch:
            return
        self.last_logged = step
        elapsed = time.perf_counter() - self.epoch_start
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        metrics = " ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if k != "loss")
        log.info(
            "epoch %d/%d step %d/%d loss %.4f %s lr %.3g %.1f examples/s",
            self.epoch + 1, self.epochs, step, self.steps_per_epoch, (logs or {}).get("loss", 0.0),
            metrics, learning_rate, step * self.batch_size / max(elapsed, 1e-9),
        )

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.epoch_start
        self.train_seconds += seconds
        self.epochs_run += 1
        summary = " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items())
                           if k.startswith("val_"))
        log.info("epoch %d/%d done in %.1fs: %s", epoch + 1, self.epochs, seconds, summary)


class HParamsSummary(keras.callbacks.Callback):
    """Writes the run's hyperparameters and final metrics for TensorBoard's HParams dashboard."""

    def __init__(self, log_dir: Path, hparams: dict, evaluation: keras.callbacks.Callback):
        super().__init__()
        self.log_dir = str(log_dir)
        self.hparams = hparams
        self.evaluation = evaluation

    def on_train_begin(self, logs=None):
        with tf.summary.create_file_writer(self.log_dir).as_default():
            hparams_api.hparams(self.hparams)

    def on_train_end(self, logs=None):
        with tf.summary.create_file_writer(self.log_dir).as_default():
            for name, value in self.evaluation.latest.items():
                tf.summary.scalar(f"final/{name}", value, step=0)


def flat_hparams(cfg: DictConfig) -> dict:
    """Scalar hyperparameters of a run, flattened to dotted keys (None and lists left out)."""
    nodes = {"model": cfg.model, "optimizer": cfg.optimizer, "trainer": cfg.trainer}
    flat = {"seed": cfg.seed, "data.name": cfg.data.name,
            "data.sequence_length": cfg.data.sequence_length}
    for prefix, node in nodes.items():
        for key, value in OmegaConf.to_container(node).items():
            if isinstance(value, bool | int | float | str):
                flat[f"{prefix}.{key}"] = value
    return flat


def instantiate_callbacks(nodes: DictConfig, run_dir: Path, runtime: dict) -> list:
    """Instantiate the `_target_` nodes of a `callbacks` or `logger` config group.

    Keys set to `???` receive the value of the same name from `runtime`; `filepath` and
    `log_dir` are relative to the run folder. A node set to null is skipped.
    """
    built = []
    for name, node in nodes.items():
        if node is None:
            continue
        args = {}
        for key in node:
            if OmegaConf.is_missing(node, key):
                if key not in runtime:
                    raise ConfigError(f"`{name}.{key}` is `???` but the app has no value for it")
                args[key] = runtime[key]
            elif key in ("filepath", "log_dir"):
                args[key] = str(run_dir / node[key])
                if not (run_dir / node[key]).resolve().is_relative_to(run_dir.resolve()):
                    raise ConfigError(f"`{name}.{key}` must be a path inside the run folder. "
                                      f"Received: {node[key]!r}")
        key = nodes._get_full_key(name) if isinstance(nodes, DictConfig) else name
        built.append(instantiate(node, key=key, base=keras.callbacks.Callback, **args))
    return built
