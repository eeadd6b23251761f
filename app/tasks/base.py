"""What every task hands to the shared training flow, step by step (see app.train).

A task is built from the run config and walked through its steps in the flow's order:

    task.read_data(layout)        read and check the data, record what the run needs (labels)
    task.build_tokenizer(layout)  the preset's, `tokenizer.proto`, or trained on the data
    task.build_pipelines(strategy)  training batches (resumable by global batch index)
    task.build_model()            the compiled model (call under the strategy's scope)
    task.build_evaluation(model)  a callback adding `val_*` metrics to each epoch's logs
    task.export(model, layout)    the run's `export/` folder
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import keras
import keras_hub
import tensorflow as tf
from omegaconf import DictConfig

from app.runs.layout import RunLayout
from app.training.optim import build_optimizer


@dataclass
class TrainingData:
    """The training pipeline of a run.

    Attributes:
        batches: `start -> training batches from global batch index start` (see
            app.data.pipeline.epoch_stream), so a resumed run continues at the next batch.
        num_train: training examples per epoch.
        steps_per_epoch: training batches per epoch.
    """

    batches: Callable[[int], tf.data.Dataset]
    num_train: int
    steps_per_epoch: int


class Task(Protocol):
    """The steps of one task (fine-tuning or pretraining), in the order app.train calls them.

    Attributes:
        extra_metrics: more entries for metrics.json (e.g. the metrics before training).
    """

    extra_metrics: dict

    def read_data(self, layout: RunLayout) -> None: ...

    def build_tokenizer(self, layout: RunLayout) -> keras_hub.models.AlbertTokenizer: ...

    def build_pipelines(self, strategy: tf.distribute.Strategy) -> TrainingData: ...

    def build_model(self) -> keras.Model: ...

    def build_evaluation(self, model: keras.Model) -> keras.callbacks.Callback: ...

    def export(self, model: keras.Model, layout: RunLayout) -> Path: ...



def compile_for_training(model: keras.Model, cfg: DictConfig, steps_per_epoch: int,
                         **compile_args) -> keras.Model:
    """Compile a task model with the run's optimizer and schedule (over every epoch's steps),
    XLA and steps-per-execution settings; `compile_args` are its loss and metrics."""
    model.compile(
        optimizer=build_optimizer(cfg.optimizer, steps_per_epoch * cfg.trainer.epochs,
                                  cfg.trainer.gradient_accumulation_steps),
        jit_compile=cfg.trainer.jit_compile,
        steps_per_execution=cfg.trainer.steps_per_execution,
        **compile_args,
    )
    return model
