"""Fine-tuning (classification, sentence pairs, multi-label, regression): the flow's steps for
labelled data."""

import logging
import math
from pathlib import Path

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from app.data.pipeline import build_dataset, epoch_stream, packed_lengths, tokenized
from app.data.task import class_weights, load_task_data
from app.models.backbone import check_sequence_length
from app.models.classifier import build_task_model, task_loss, task_train_metrics
from app.models.lora import inference_copy
from app.runs.export import export_run
from app.runs.layout import RunLayout
from app.runs.record import write_json
from app.tasks.base import TrainingData, choose_lengths, compile_for_training, measure_padding
from app.tasks.tokenizer import build_tokenizer
from app.training.collapse import CollapseCheckedEvaluation, causes
from app.training.metrics import multilabel_thresholds

log = logging.getLogger(__name__)

SAMPLE_PREDICTIONS = 8


class FineTuning:
    """Labelled splits -> tokenizer -> length-bucketed batches -> AlbertTextClassifier.

    Args:
        cfg: the composed run config (`data.task` classification, multilabel or regression).
    """

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.extra_metrics: dict = {}

    def read_data(self, layout: RunLayout) -> None:
        """Read both splits (errors name file and line) and record the label names."""
        self.task, self.train_split, self.eval_split = load_task_data(self.cfg.data)
        log.info("Task: %s, %d train / %d eval examples, labels %s", self.task.kind,
                 len(self.train_split), len(self.eval_split), list(self.task.label_names))
        write_json(layout.labels, list(self.task.label_names))
        if self.task.kind == "multilabel":
            counts = self.train_split.targets.sum(axis=0).astype(int).tolist()
            log.info("Multi-label: training examples per label %s, %.2f labels per example",
                     dict(zip(self.task.label_names, counts, strict=True)),
                     float(self.train_split.targets.sum(axis=1).mean()))
        self.class_weights = None
        if self.task.positive_label is not None:
            log.info("Binary F1 of the positive label %r", self.task.positive_label)
            self.extra_metrics["positive_label"] = self.task.positive_label
        if self.cfg.data.class_weight == "balanced":
            self.class_weights = class_weights(self.task, self.train_split.targets)
            weights = dict(zip(self.task.label_names, self.class_weights.tolist(), strict=True))
            log.info("Class weights (data.class_weight=balanced): %s", weights)
            self.extra_metrics["class_weights"] = weights

    def build_tokenizer(self, layout: RunLayout) -> keras_hub.models.AlbertTokenizer:
        """The run's tokenizer (trained on the training texts unless given), the lengths left
        null (chosen from the training texts) and the preprocessor."""
        texts = [text for column in self.train_split.texts for text in column]
        self.tokenizer = build_tokenizer(self.cfg, texts, layout.tokenizer_dir)
        lengths = choose_lengths(self.cfg, layout,
                                 lambda: packed_lengths(self.train_split, self.tokenizer))
        if lengths:
            self.extra_metrics["lengths"] = lengths
        self.preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(
            self.tokenizer, sequence_length=self.cfg.data.sequence_length)
        return self.tokenizer

    def build_pipelines(self, strategy: tf.distribute.Strategy) -> TrainingData:
        """Tokenized once (cached), shuffled per epoch, optionally length-bucketed (`strategy`
        distributes the batches as Keras does: auto-sharded across workers)."""
        cfg = self.cfg
        batches = epoch_stream(tokenized(self.train_split, self.preprocessor),
                               len(self.train_split), cfg.trainer.batch_size,
                               cfg.data.shuffle_buffer, cfg.seed, cfg.trainer.epochs,
                               padding=cfg.data.padding,
                               bucket_boundaries=cfg.data.bucket_boundaries,
                               class_weights=self.class_weights)
        steps = math.ceil(len(self.train_split) / cfg.trainer.batch_size)
        self.data = TrainingData(batches, len(self.train_split), steps)
        self.extra_metrics["padding"] = measure_padding(self.data)
        return self.data

    def build_model(self) -> keras.Model:
        """The compiled classifier (or regressor); call under the strategy's scope."""
        cfg = self.cfg
        model = build_task_model(cfg.model, self.task, self.tokenizer.vocabulary_size())
        check_sequence_length(model.backbone, cfg.data.sequence_length)
        return compile_for_training(model, cfg, self.data.steps_per_epoch,
                                    loss=task_loss(self.task),
                                    metrics=task_train_metrics(self.task))

    def build_evaluation(self, model: keras.Model) -> CollapseCheckedEvaluation:
        """Task metrics (F1, MCC, correlations) on the whole eval split after every epoch,
        and a check that the model does not predict one class (or score) for all of it."""
        cfg = self.cfg
        dataset = build_dataset(self.eval_split, self.preprocessor, cfg.trainer.batch_size)
        self.eval_dataset = dataset
        counts = None
        if self.task.kind == "classification":
            counts = np.bincount(self.train_split.targets, minlength=self.task.num_outputs)
        hint = causes(cfg.optimizer.learning_rate, self.tokenizer.vocabulary_size(), counts)
        return CollapseCheckedEvaluation(dataset, self.eval_split.targets, self.task,
                                         task_loss(self.task), cfg.trainer.on_collapse, hint,
                                         self.extra_metrics)

    def export(self, model: keras.Model, layout: RunLayout) -> Path:
        """Preset, `.keras` and SavedModel, with the preprocessor attached (a multi-label run's
        thresholds first: see `store_thresholds`)."""
        samples = tuple(column[:SAMPLE_PREDICTIONS] for column in self.eval_split.texts)
        thresholds = (self.store_thresholds(model, layout)
                      if self.task.kind == "multilabel" else None)
        return export_run(inference_copy(model), self.preprocessor, layout.root,
                          self.task.label_names,
                          samples[0] if len(samples) == 1 else samples, thresholds)

    def store_thresholds(self, model: keras.Model, layout: RunLayout) -> tuple[float, ...]:
        """The final model's threshold per label, written to `thresholds.json` and metrics.json
        (and returned, for the exports).

        `data.threshold` for every label, or with `data.tune_thresholds` tuned on the eval
        split for the final model, as each epoch's evaluation did (so the final metrics are
        those of these thresholds, and `albert-evaluate` on the eval split gives them again).
        """
        if self.task.tune_thresholds:
            outputs = model.predict(self.eval_dataset, verbose=0).astype("float32")
            thresholds = multilabel_thresholds(self.task, self.eval_split.targets, outputs)
        else:
            thresholds = multilabel_thresholds(self.task, self.eval_split.targets, None)
        by_label = dict(zip(self.task.label_names, thresholds.tolist(), strict=True))
        write_json(layout.thresholds, by_label)
        self.extra_metrics["thresholds"] = {
            "tuned": self.task.tune_thresholds,
            "source": ("tuned per label on the eval split (data.tune_thresholds)"
                       if self.task.tune_thresholds else "data.threshold"),
            "by_label": by_label}
        log.info("Thresholds (%s): %s", self.extra_metrics["thresholds"]["source"], by_label)
        return tuple(thresholds.tolist())
