"""The fine-tuning model: keras-hub's AlbertTextClassifier (one logit per class, or per label of
a multi-label task), or its regression form."""

import keras
import keras_hub
from omegaconf import DictConfig

from app.data.task import TaskSpec
from app.models.albert_backbone import task_classes
from app.models.backbone import build_backbone, load_preset_heads


def build_task_model(
    model: DictConfig, task: TaskSpec, vocabulary_size: int
) -> keras_hub.models.AlbertTextClassifier:
    """An AlbertTextClassifier emitting logits, or one linear output for regression.

    Preprocessing runs in tf.data during fit (`preprocessor=None`); it is attached for export.
    A transformers checkpoint's classifier head is kept when it has as many outputs.
    """
    backbone = build_backbone(model, vocabulary_size)
    classifier = task_classes(backbone)[0](
        backbone=backbone,
        num_classes=task.num_outputs,
        preprocessor=None,
        activation=None,
        dropout=model.classifier_dropout,
    )
    load_preset_heads(classifier, model)
    return classifier


def task_loss(task: TaskSpec) -> keras.losses.Loss:
    """Cross-entropy on logits for classification, binary cross-entropy per label on logits
    for multi-label, mean squared error for regression."""
    if task.kind == "regression":
        return keras.losses.MeanSquaredError()
    if task.kind == "multilabel":
        return keras.losses.BinaryCrossentropy(from_logits=True)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def task_train_metrics(task: TaskSpec) -> list[keras.metrics.Metric]:
    """Running metrics shown during training (the full evaluation runs per epoch)."""
    if task.kind == "regression":
        return []
    if task.kind == "multilabel":
        # The share of (example, label) decisions right at probability 0.5 (logit 0).
        return [keras.metrics.BinaryAccuracy(name="label_accuracy", threshold=0.0)]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
