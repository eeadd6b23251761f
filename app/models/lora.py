"""LoRA fine-tuning (`model.lora_rank`): low-rank adapters on the backbone, merged for export
(`inference_copy`: the copy every export is written from).

keras-hub's `Backbone.enable_lora(rank)` freezes every backbone weight and gives the query and
value projections of each attention layer (keras `EinsumDense` layers named `query`, `value`)
trainable factors `lora_kernel_a` (kernel shape but the last axis, then rank) and
`lora_kernel_b` (rank, last axis); the task's head (outside the backbone) trains in full. Keras
computes `kernel + (lora_alpha / lora_rank) * lora_kernel_a @ lora_kernel_b` on every call
(keras/src/layers/core/einsum_dense.py; `lora_alpha` defaults to the rank).

Example:
    >>> enable_lora(classifier, rank=8)   # before compile
    >>> plain = type(classifier).from_config(classifier.get_config())   # no LoRA
    >>> plain.set_weights(merged_weights(classifier))
"""

import logging

import keras
import numpy as np

from app.errors import ConfigError

log = logging.getLogger(__name__)

LORA_FACTORS = ("lora_kernel_a", "lora_kernel_b")


def lora_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of `model.backbone` with LoRA enabled."""
    # keras-hub's `enable_lora` walks the backbone's layers the same way.
    layers = model.backbone._flatten_layers(include_self=False)
    return [layer for layer in layers if getattr(layer, "lora_enabled", False)]


def enable_lora(model: keras.Model, rank: int | None) -> None:
    """LoRA of `rank` on `model.backbone`'s attention (None: off), its trainable share logged.

    Call before `compile`. A backbone without keras-hub's LoRA target layers is a ConfigError.
    """
    if rank is None:
        return
    model.backbone.enable_lora(rank)
    if not lora_layers(model):
        raise ConfigError(
            f"`model.lora_rank` needs a backbone with attention projections named "
            f"{model.backbone.default_lora_layer_names()}: {type(model.backbone).__name__} has "
            f"none. Received: lora_rank={rank} (set model.lora_rank=null)")
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    total = model.count_params()
    log.info("LoRA rank %d: %d trainable of %d parameters (%.2f%%)", rank, trainable, total,
             100 * trainable / total)


def merged_weights(model: keras.Model) -> list[np.ndarray]:
    """`model.get_weights()` with each LoRA layer's factors merged into its kernel and left
    out: the weights of the same model without LoRA (a `from_config` copy of it).

    The merge is keras' own, in float32: `kernel + (lora_alpha / lora_rank) * a @ b`. Keras
    merges on save too (`save_own_variables`), but in the compute dtype (bfloat16 under mixed
    precision), and a SavedModel traced from a LoRA model carries the factors.
    """
    merged = {}
    for layer in lora_layers(model):
        kernel = next(v for v in layer.weights if v.name == "kernel")
        a, b = (keras.ops.convert_to_numpy(getattr(layer, name)) for name in LORA_FACTORS)
        merged[id(kernel)] = (keras.ops.convert_to_numpy(kernel)
                              + (layer.lora_alpha / layer.lora_rank) * np.matmul(a, b))
    return [merged.get(id(v), keras.ops.convert_to_numpy(v)) for v in model.weights
            if v.name not in LORA_FACTORS]


def inference_copy(model: keras.Model) -> keras.Model:
    """A fresh copy of a trained `model` with its weights, for export.

    The copy compiles itself as keras-hub tasks do, with an optimizer that was never built: its
    presets and `.keras` hold no optimizer slots (the resume state stays in `checkpoints/`), and
    `from_preset` loads them without "Skipping variable loading for optimizer" warnings.
    """
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(merged_weights(model))  # LoRA factors merged into the kernels
    return copy
