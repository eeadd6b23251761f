"""The MLM + SOP pretrainer: AlbertBackbone, a tied masked-LM head and a sentence-order head."""

import keras
import keras_hub
import tensorflow as tf

from app.models.albert_backbone import task_classes

SOP_CLASSES = 2
LAYER_NORM_EPS = 1e-12


@keras.saving.register_keras_serializable(package="app")
class AlbertPretrainer(keras_hub.models.Task):
    """ALBERT's pretraining model: outputs `mlm` logits at `mask_positions` and `sop` logits.

    The masked-LM head is keras-hub's `AlbertMaskedLM` head (weights tied to the token embedding),
    so it exports as an `AlbertMaskedLM`; keras-hub has no sentence-order head, so `sop_head` is
    a Dense layer on the pooled [CLS] output, as in ALBERT.

    Args:
        backbone: a `keras_hub.models.AlbertBackbone`.
        preprocessor: unused during pretraining (masking runs in tf.data); None.

    Example:
        >>> model = AlbertPretrainer(keras_hub.models.AlbertBackbone(...))
        >>> outputs = model({"token_ids": ..., "segment_ids": ..., "padding_mask": ...,
        ...                  "mask_positions": ...})   # {"mlm": [B, P, V], "sop": [B, 2]}
    """

    backbone_cls = keras_hub.models.AlbertBackbone

    def __init__(self, backbone, preprocessor=None, compile=False, **kwargs):
        # Reuse AlbertMaskedLM's head (activation, initializer, tying) rather than copy it.
        masked_lm_head = task_classes(backbone)[1](backbone).masked_lm_head
        # keras-hub gives this head's LayerNorm epsilon 1e-5; ALBERT and transformers use 1e-12
        # (1e-4 apart in the logits of a transformers checkpoint, measured).
        masked_lm_head._intermediate_layer_norm.epsilon = LAYER_NORM_EPS
        sop_head = keras.layers.Dense(
            SOP_CLASSES,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name="sop_head",
        )
        inputs = {
            **backbone.input,
            "mask_positions": keras.Input(shape=(None,), dtype="int32", name="mask_positions"),
        }
        outputs = backbone(backbone.input)
        super().__init__(
            inputs=inputs,
            outputs={
                "mlm": masked_lm_head(outputs["sequence_output"], inputs["mask_positions"]),
                "sop": sop_head(outputs["pooled_output"]),
            },
            compile=compile,
            **kwargs,
        )
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.masked_lm_head = masked_lm_head
        self.sop_head = sop_head

    def fit(self, x=None, **kwargs):
        """Keras' `fit`. A `tf.distribute.DistributedDataset` (every worker streaming its own
        shards) goes to Keras directly: keras-hub's `fit` takes it for arrays, and there is no
        preprocessor to map over it."""
        if isinstance(x, tf.distribute.DistributedDataset):
            return keras.Model.fit(self, x, **kwargs)
        return super().fit(x, **kwargs)

    def to_masked_lm(self, preprocessor=None) -> keras_hub.models.AlbertMaskedLM:
        """An `AlbertMaskedLM` sharing this backbone, with a copy of the masked-LM head."""
        masked_lm = task_classes(self.backbone)[1](self.backbone, preprocessor=preprocessor)
        masked_lm.masked_lm_head.set_weights(self.masked_lm_head.get_weights())
        return masked_lm


def pretraining_losses() -> dict[str, keras.losses.Loss]:
    """Cross-entropy for both heads; the MLM mean runs over real predictions only (weights)."""
    return {
        "mlm": keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"),
        "sop": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    }


def pretraining_metrics() -> dict:
    """compile() kwargs for `mlm_accuracy`, `mlm_perplexity` (weighted) and `sop_accuracy`."""
    return {
        "weighted_metrics": {"mlm": [
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras_hub.metrics.Perplexity(from_logits=True, name="perplexity"),
        ]},
        "metrics": {"sop": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]},
    }


def export_preset(
    model: AlbertPretrainer,
    tokenizer: keras_hub.tokenizers.Tokenizer,
    preset_dir,
    sequence_length: int,
    mask_selection_rate: float,
    mask_selection_length: int,
) -> None:
    """Save an `AlbertMaskedLM` preset (backbone, MLM head, tokenizer, preprocessor).

    Fine-tuning loads it with `AlbertBackbone.from_preset(dir)` and
    `AlbertTokenizer.from_preset(dir)` (`model.preset=<dir>`). The preprocessor masks as the
    pretraining did (share of tokens, predictions per sequence).
    """
    preprocessor = task_classes(model.backbone)[1].preprocessor_cls(
        tokenizer,
        sequence_length=sequence_length,
        mask_selection_rate=mask_selection_rate,
        mask_selection_length=mask_selection_length,
    )
    model.to_masked_lm(preprocessor).save_to_preset(str(preset_dir))
