"""Backbone and task model from config: keras-hub's AlbertTextClassifier, or its regression form."""

import logging

import keras
import keras_hub
from omegaconf import DictConfig, OmegaConf

from app.data.task import TaskSpec
from app.errors import ConfigError
from app.instantiate import instantiate
from app.loading import load_backbone

log = logging.getLogger(__name__)

# Keys of the `model` node that are not AlbertBackbone arguments.
NON_BACKBONE_KEYS = ("preset", "classifier_dropout")


def build_backbone(model: DictConfig, vocabulary_size: int) -> keras_hub.models.AlbertBackbone:
    """An AlbertBackbone: random init from the config's shape, or loaded from `model.preset`."""
    if model.preset is not None:
        log.info("Loading backbone weights from preset %s", model.preset)
        backbone = load_backbone(model.preset)
        if backbone.vocabulary_size != vocabulary_size:
            raise ConfigError(
                f"`model.preset` {model.preset!r} has a vocabulary of {backbone.vocabulary_size}, "
                f"but the tokenizer has {vocabulary_size}"
            )
        return backbone
    args = {k: v for k, v in OmegaConf.to_container(model).items() if k not in NON_BACKBONE_KEYS}
    return instantiate(args, key="model", base=keras_hub.models.Backbone,
                       vocabulary_size=vocabulary_size)


def build_task_model(
    model: DictConfig, task: TaskSpec, vocabulary_size: int
) -> keras_hub.models.AlbertTextClassifier:
    """An AlbertTextClassifier emitting logits, or one linear output for regression.

    Preprocessing runs in tf.data during fit (`preprocessor=None`); it is attached for export.
    """
    return keras_hub.models.AlbertTextClassifier(
        backbone=build_backbone(model, vocabulary_size),
        num_classes=task.num_outputs,
        preprocessor=None,
        activation=None,
        dropout=model.classifier_dropout,
    )


def task_loss(task: TaskSpec) -> keras.losses.Loss:
    """Cross-entropy on logits for classification, mean squared error for regression."""
    if task.kind == "regression":
        return keras.losses.MeanSquaredError()
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def task_train_metrics(task: TaskSpec) -> list[keras.metrics.Metric]:
    """Running metrics shown during training (the full evaluation runs per epoch)."""
    if task.kind == "regression":
        return []
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
