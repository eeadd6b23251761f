"""The token-classification model: one tag per piece from the backbone's sequence output.

keras-hub has no ALBERT token classifier (keras-hub issue #624); this one is a keras-hub Task
shaped like its `AlbertTextClassifier` (same layer names: `output_dropout`, `output_dense`),
with transformers' `AlbertForTokenClassification` head: dropout, then a dense layer on every
position's hidden state. Registered, so presets and `.keras` files reload it.
"""

import keras
import keras_hub
from omegaconf import DictConfig

from app.data.tagging import IGNORE
from app.models.backbone import build_backbone, load_preset_heads


@keras.saving.register_keras_serializable(package="app")
class AlbertTokenClassifier(keras_hub.models.Task):
    """Logits for each tag at every position of an ALBERT backbone's sequence output.

    Args:
        backbone: a keras-hub `AlbertBackbone` (or the app's activation backbone).
        num_classes: the number of tags.
        preprocessor: a keras-hub `AlbertTextClassifierPreprocessor` (raw strings to pieces,
            for serving), or None when inputs come preprocessed.
        dropout: the dropout rate before the dense layer.

    Example:
        >>> tagger = AlbertTokenClassifier(backbone, num_classes=7)
        >>> tagger(features).shape  # (batch, sequence_length, 7)
    """

    backbone_cls = keras_hub.models.AlbertBackbone
    preprocessor_cls = keras_hub.models.AlbertTextClassifierPreprocessor

    def __init__(self, backbone, num_classes: int, preprocessor=None, dropout: float = 0.1,
                 **kwargs):
        # === Layers ===
        backbone.pooled_dense.trainable = False  # unused: a tag per position, no pooled output
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_dropout = keras.layers.Dropout(dropout, dtype=backbone.dtype_policy,
                                                   name="output_dropout")
        self.output_dense = keras.layers.Dense(
            num_classes, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy, name="logits")

        # === Functional Model ===
        inputs = backbone.input
        sequence = backbone(inputs)["sequence_output"]
        outputs = self.output_dense(self.output_dropout(sequence))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.dropout = dropout

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="app")
class TokenAccuracy(keras.metrics.Mean):
    """The share of labelled pieces (label != IGNORE) whose argmax is their label."""

    def __init__(self, name: str = "accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = keras.ops.cast(y_true, "int32")
        right = keras.ops.cast(keras.ops.argmax(y_pred, axis=-1) == y_true, "float32")
        return super().update_state(right, keras.ops.cast(y_true != IGNORE, "float32"))


def build_tagger(model: DictConfig, num_tags: int, vocabulary_size: int) -> AlbertTokenClassifier:
    """An AlbertTokenClassifier from the `model` node; a transformers checkpoint's token head is
    kept when it has as many tags."""
    tagger = AlbertTokenClassifier(build_backbone(model, vocabulary_size), num_tags,
                                   dropout=model.classifier_dropout)
    load_preset_heads(tagger, model)
    return tagger


def tagger_loss() -> keras.losses.Loss:
    """Cross-entropy on logits averaged over labelled pieces (IGNORE pieces carry none)."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE)
