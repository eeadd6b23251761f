"""The bare loop the app is compared with: keras-hub's own model on the app's batches, in memory.

The batches are the app's own (same shapes, lengths and contents), pulled from a second
iterator over the app's stream and held in memory, so the bare loop pays for no input pipeline.
"""

from dataclasses import dataclass

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from app.data.tagging import IGNORE
from app.models.flops import batch_flops


def bare_model(cfg: DictConfig, backbone: keras_hub.models.AlbertBackbone, num_outputs: int,
               pretraining: bool) -> keras.Model:
    """keras-hub's own model with the architecture of the app's built `backbone` (a preset's
    included, random weights), compiled with Keras defaults (AdamW, cross-entropy).

    keras-hub has no ALBERT token classifier: for token classification, its backbone's sequence
    output and a Dense layer in a functional model, its loss skipping unlabelled pieces.
    """
    fresh = keras_hub.models.AlbertBackbone.from_config(backbone.get_config())
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if pretraining:
        model = keras_hub.models.AlbertMaskedLM(fresh, preprocessor=None)
    elif cfg.data.task == "token_classification":
        logits = keras.layers.Dense(num_outputs)(fresh(fresh.input)["sequence_output"])
        model = keras.Model(fresh.input, logits)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE)
    else:
        model = keras_hub.models.AlbertTextClassifier(fresh, num_outputs, preprocessor=None)
    model.compile(
        optimizer=keras.optimizers.AdamW(cfg.optimizer.learning_rate),
        loss=loss,
        weighted_metrics=["sparse_categorical_accuracy"],
        jit_compile=cfg.trainer.jit_compile,
        steps_per_execution=cfg.trainer.steps_per_execution,
    )
    return model


def for_bare(batch, pretraining: bool):
    """An app batch as keras-hub's model takes it (pretraining: the masked-LM part only)."""
    if not pretraining:
        return batch
    x, y, sample_weight = batch
    return x, y["mlm"], sample_weight["mlm"]


@dataclass
class BatchStats:
    """What a run of batches holds: examples, tokens and training FLOPs, padded and real."""

    batches: int = 0
    examples: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    padded_flops: int = 0
    real_flops: int = 0

    def add(self, padding_mask: np.ndarray, flops_args: dict) -> None:
        """Count one batch from its [rows, width] padding mask."""
        rows, width = padding_mask.shape
        lengths = padding_mask.astype(bool).sum(axis=1)
        padded, real = batch_flops(lengths=lengths, width=width, **flops_args)
        self.batches += 1
        self.examples += rows
        self.padded_tokens += rows * width
        self.real_tokens += int(lengths.sum())
        self.padded_flops += padded
        self.real_flops += real


def take_batches(iterator, steps: int, flops_args: dict) -> tuple[list, BatchStats]:
    """The next `steps` batches of `iterator` (as numpy) and their stats."""
    batches, stats = [], BatchStats()
    for _ in range(steps):
        batch = tf.nest.map_structure(lambda t: t.numpy(), next(iterator))
        stats.add(batch[0]["padding_mask"], flops_args)
        batches.append(batch)
    return batches, stats


def in_memory(batches: list, element_spec) -> tf.data.Dataset:
    """A dataset yielding `batches` in order, with the app's `element_spec`.

    Batches of different widths cannot stack: each component is kept as one flat array with
    each batch's offset and shape, and cut back out by a cheap map (slice and reshape).
    """
    flat = [tf.nest.flatten(batch) for batch in batches]
    parts = []
    for index, spec in enumerate(tf.nest.flatten(element_spec)):
        arrays = [np.asarray(components[index]) for components in flat]
        sizes = np.array([a.size for a in arrays], np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        shapes = np.array([a.shape for a in arrays], np.int64).reshape(len(arrays), -1)
        values = tf.constant(np.concatenate([a.reshape(-1) for a in arrays]),
                             dtype=spec.dtype)
        parts.append((values, tf.constant(starts), tf.constant(sizes), tf.constant(shapes),
                      spec.shape))

    def cut(i):
        out = []
        for values, starts, sizes, shapes, static in parts:
            piece = tf.reshape(values[starts[i]:starts[i] + sizes[i]], shapes[i])
            piece.set_shape(static)
            out.append(piece)
        return tf.nest.pack_sequence_as(element_spec, out)

    return tf.data.Dataset.range(len(batches)).map(cut).prefetch(tf.data.AUTOTUNE)
