"""Run callbacks: full-split evaluation, progress lines, HParams, and configured Keras callbacks."""

import json
import logging
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf
from tensorboard.plugins.hparams import api as hparams_api

from app.config.instantiate import instantiate
from app.data.task import TaskSpec
from app.errors import ConfigError
from app.runs.record import write_json
from app.training.metrics import evaluate_predictions

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
        self.outputs = outputs  # for checks of the predictions (app.training.collapse)
        self.latest = {f"val_{name}": value for name, value in self.measure(outputs).items()}
        if logs is not None:
            logs.update(self.latest)

    def measure(self, outputs: np.ndarray) -> dict[str, float]:
        """The loss and the task's metrics of the model's outputs on the whole split."""
        loss = float(keras.ops.convert_to_numpy(self.loss(self.targets, outputs)))
        return {"loss": loss, **evaluate_predictions(self.task, self.targets, outputs)}


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


def format_duration(seconds: float) -> str:
    """`1h02m`, `3m05s` or `42s`."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressLog(keras.callbacks.Callback):
    """Progress of the run with the time left: a bar on a terminal, else log lines.

    Log lines (every `every_n_steps` steps and per epoch) carry the loss and the other training
    metrics (running means over the epoch), learning rate, examples/s and the time left for the
    whole run. `train_seconds` and `steps_run` count training batches only (evaluation and
    checkpoint saves between them left out), across the processes of a resumed run.

    Args:
        batch_size: the global batch size.
        steps_per_epoch: training batches per epoch.
        epochs: epochs of the whole run.
        every_n_steps: steps between log lines.
        bar: show a Keras progress bar (default: when stderr is a terminal).
        train_seconds: training time of earlier processes of this run.
        steps_run: batches trained by earlier processes of this run.
    """

    def __init__(self, batch_size: int, steps_per_epoch: int, epochs: int, every_n_steps: int,
                 bar: bool | None = None, train_seconds: float = 0.0, steps_run: int = 0):
        super().__init__()
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.every_n_steps = every_n_steps
        self.bar = sys.stderr.isatty() if bar is None else bar
        self.train_seconds = train_seconds
        self.steps_run = steps_run

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epoch_start = time.perf_counter()
        self.epoch_seconds = 0.0
        self.last_logged = self.last_step = 0
        # A resumed epoch runs only its remaining batches (Keras' params["steps"]).
        self.epoch_steps = self.params.get("steps") or self.steps_per_epoch
        self.progbar = None

    def on_train_batch_begin(self, batch, logs=None):
        self.batch_start = time.perf_counter()

    def seconds_left(self, step: int) -> float:
        """The whole run's remaining time at `step` of this epoch."""
        left = self.epoch_steps - step + (self.epochs - self.epoch - 1) * self.steps_per_epoch
        return self.train_seconds / max(self.steps_run, 1) * left

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1
        seconds = time.perf_counter() - self.batch_start
        self.train_seconds += seconds
        self.epoch_seconds += seconds
        self.steps_run += step - self.last_step
        self.last_step = step
        logs = logs or {}
        if self.bar:
            if self.progbar is None:  # the logs are running means already: shown as they are
                self.progbar = keras.utils.Progbar(self.epoch_steps, unit_name="step",
                                                   stateful_metrics=list(logs))
            self.progbar.update(step, list(logs.items()))
        if step - self.last_logged < self.every_n_steps and step != self.epoch_steps:
            return
        self.last_logged = step
        if self.bar:
            return
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        metrics = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "loss")
        log.info(
            "epoch %d/%d step %d/%d loss %.4f %s lr %.3g %.1f examples/s, %s left",
            self.epoch + 1, self.epochs, step, self.epoch_steps, logs.get("loss", 0.0),
            metrics, learning_rate, step * self.batch_size / max(self.epoch_seconds, 1e-9),
            format_duration(self.seconds_left(step)),
        )

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.epoch_start
        left = format_duration(self.seconds_left(self.epoch_steps))
        summary = " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items())
                           if k.startswith("val_"))
        log.info("epoch %d/%d done in %.1fs (%s left): %s", epoch + 1, self.epochs, seconds,
                 left, summary)


class HParamsSummary(keras.callbacks.Callback):
    """Writes the run's hyperparameters (at train begin) and final metrics (`write_final`,
    once the run knows them: the best epoch's with `trainer.use_best`) for TensorBoard's HParams
    dashboard."""

    def __init__(self, log_dir: Path, hparams: dict):
        super().__init__()
        self.log_dir = str(log_dir)
        self.hparams = hparams

    def on_train_begin(self, logs=None):
        with tf.summary.create_file_writer(self.log_dir).as_default():
            hparams_api.hparams(self.hparams)

    def write_final(self, final: dict[str, float]) -> None:
        with tf.summary.create_file_writer(self.log_dir).as_default():
            for name, value in final.items():
                tf.summary.scalar(f"final/{name}", value, step=0)


def flat_hparams(cfg: DictConfig) -> dict:
    """Scalar hyperparameters of a run, flattened to dotted keys (None and lists left out)."""
    nodes = {"model": cfg.model, "optimizer": cfg.optimizer, "trainer": cfg.trainer}
    flat = {"seed": cfg.seed, "data.name": cfg.data.name,
            "data.sequence_length": cfg.data.sequence_length}
    for prefix, node in nodes.items():
        for key, value in OmegaConf.to_container(node, resolve=True).items():
            if isinstance(value, bool | int | float | str):
                flat[f"{prefix}.{key}"] = value
    return flat


def instantiate_callbacks(nodes: DictConfig, run_dir: Path, runtime: dict) -> list:
    """Instantiate the `_target_` nodes of a `callbacks` or `logger` config group.

    Keys set to `???` receive the value of the same name from `runtime` (`run_dir`: the run
    folder); `filepath` and `log_dir` are relative to the run folder. A node set to null is
    skipped.
    """
    runtime = {"run_dir": str(run_dir), **runtime}
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


class EpochLog(keras.callbacks.Callback):
    """Per-epoch logs kept in the run folder (`history.json`), so a resumed run's history
    holds the epochs of every process that worked on it."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def _epochs(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def on_epoch_end(self, epoch, logs=None):
        epochs = self._epochs()
        epochs[str(epoch)] = {name: float(value) for name, value in (logs or {}).items()}
        write_json(self.path, epochs)

    def history(self) -> dict[str, list[float]]:
        """Metric name -> one value per epoch, in epoch order."""
        epochs = self._epochs()
        merged: dict[str, list[float]] = {}
        for epoch in sorted(epochs, key=int):
            for name, value in epochs[epoch].items():
                merged.setdefault(name, []).append(value)
        return merged
