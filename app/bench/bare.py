"""The bare loop the app is compared with: keras-hub's own model on pre-made batches."""

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf


def random_batches(cfg: DictConfig, vocabulary_size: int, num_outputs: int,
                    pretraining: bool, count: int = 8):
    """`count` pre-made random batches of the app's shapes, (x, y[, sample_weight]), repeated."""
    rng = np.random.default_rng(cfg.seed)
    n, length = (count, cfg.trainer.batch_size), cfg.data.sequence_length
    x = {
        "token_ids": rng.integers(5, vocabulary_size, (*n, length), dtype=np.int32),
        "segment_ids": np.zeros((*n, length), np.int32),
        "padding_mask": np.ones((*n, length), np.int32),
    }
    if pretraining:
        predictions = cfg.data.max_predictions
        x["mask_positions"] = np.sort(rng.integers(1, length, (*n, predictions), dtype=np.int32))
        data = (x, rng.integers(5, vocabulary_size, (*n, predictions), dtype=np.int32),
                np.ones((*n, predictions), np.float32))
    else:
        data = (x, rng.integers(0, num_outputs, n, dtype=np.int32))
    return tf.data.Dataset.from_tensor_slices(data).repeat()  # each element is a whole batch


def bare_model(cfg: DictConfig, vocabulary_size: int, num_outputs: int, pretraining: bool):
    """keras-hub's own model at the app's shape, compiled with Keras defaults (AdamW, CE)."""
    args = {k: v for k, v in OmegaConf.to_container(cfg.model).items()
            if k not in ("_target_", "preset", "classifier_dropout")}
    backbone = keras_hub.models.AlbertBackbone(vocabulary_size=vocabulary_size, **args)
    if pretraining:
        model = keras_hub.models.AlbertMaskedLM(backbone, preprocessor=None)
    else:
        model = keras_hub.models.AlbertTextClassifier(backbone, num_outputs, preprocessor=None)
    model.compile(
        optimizer=keras.optimizers.AdamW(cfg.optimizer.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["sparse_categorical_accuracy"],
        jit_compile=cfg.trainer.jit_compile,
        steps_per_execution=cfg.trainer.steps_per_execution,
    )
    return model
