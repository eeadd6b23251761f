"""Fine-tuning (classification, sentence pairs, regression): the flow's steps for labelled data."""

import logging
import math
from pathlib import Path

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from app.data.pipeline import build_dataset, epoch_stream, tokenized
from app.data.task import class_weights, load_task_data
from app.models.backbone import check_sequence_length
from app.models.classifier import build_task_model, task_loss, task_train_metrics
from app.runs.export import export_run
from app.runs.layout import RunLayout
from app.runs.record import write_json
from app.tasks.base import TrainingData
from app.tasks.tokenizer import build_tokenizer
from app.training.collapse import CollapseCheckedEvaluation, causes
from app.training.optim import build_optimizer

log = logging.getLogger(__name__)

SAMPLE_PREDICTIONS = 8


class FineTuning:
    """Labelled splits -> tokenizer -> length-bucketed batches -> AlbertTextClassifier.

    Args:
        cfg: the composed run config (`data.task` classification or regression).
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
        """The run's tokenizer (trained on the training texts unless given) and preprocessor."""
        texts = [text for column in self.train_split.texts for text in column]
        self.tokenizer = build_tokenizer(self.cfg, texts, layout.tokenizer_dir)
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
                               bucket_boundaries=cfg.data.bucket_boundaries,
                               class_weights=self.class_weights)
        steps = math.ceil(len(self.train_split) / cfg.trainer.batch_size)
        self.data = TrainingData(batches, len(self.train_split), steps)
        return self.data

    def build_model(self) -> keras.Model:
        """The compiled classifier (or regressor); call under the strategy's scope."""
        cfg = self.cfg
        model = build_task_model(cfg.model, self.task, self.tokenizer.vocabulary_size())
        check_sequence_length(model.backbone, cfg.data.sequence_length)
        model.compile(
            optimizer=build_optimizer(cfg.optimizer,
                                      self.data.steps_per_epoch * cfg.trainer.epochs,
                                      cfg.trainer.gradient_accumulation_steps),
            loss=task_loss(self.task),
            metrics=task_train_metrics(self.task),
            jit_compile=cfg.trainer.jit_compile,
            steps_per_execution=cfg.trainer.steps_per_execution,
        )
        return model

    def build_evaluation(self, model: keras.Model) -> CollapseCheckedEvaluation:
        """Task metrics (F1, MCC, correlations) on the whole eval split after every epoch,
        and a check that the model does not predict one class (or score) for all of it."""
        cfg = self.cfg
        dataset = build_dataset(self.eval_split, self.preprocessor, cfg.trainer.batch_size)
        counts = None
        if self.task.kind == "classification":
            counts = np.bincount(self.train_split.targets, minlength=self.task.num_outputs)
        hint = causes(cfg.optimizer.learning_rate, self.tokenizer.vocabulary_size(), counts)
        return CollapseCheckedEvaluation(dataset, self.eval_split.targets, self.task,
                                         task_loss(self.task), cfg.trainer.on_collapse, hint,
                                         self.extra_metrics)

    def export(self, model: keras.Model, layout: RunLayout) -> Path:
        """Preset, `.keras` and SavedModel, with the preprocessor attached."""
        samples = tuple(column[:SAMPLE_PREDICTIONS] for column in self.eval_split.texts)
        return export_run(model, self.preprocessor, layout.root, self.task.label_names,
                          samples[0] if len(samples) == 1 else samples)
