"""What a run trains: the piece each task (fine-tuning, pretraining) hands to the shared fit."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf


@dataclass
class TrainingJob:
    """A compiled model with its data, evaluation and export, ready for `app.train`'s fit.

    Attributes:
        model: the compiled Keras model (built under the strategy's scope).
        batches: `start -> training batches from global batch index start` (see
            app.data.pipeline.epoch_stream), so a resumed run continues at the next batch.
        num_train: training examples per epoch.
        steps_per_epoch: training batches per epoch.
        evaluation: a callback that adds `val_*` metrics to each epoch's logs and keeps the
            latest in `.latest`.
        export: writes the run's `export/` folder.
        extra_metrics: more entries for metrics.json (e.g. the metrics before training).
    """

    model: keras.Model
    batches: Callable[[int], tf.data.Dataset]
    num_train: int
    steps_per_epoch: int
    evaluation: keras.callbacks.Callback
    export: Callable[[Path], None]
    extra_metrics: dict = field(default_factory=dict)
