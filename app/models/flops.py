"""Analytic FLOP count of an ALBERT training step, from the architecture of a built model.

Counts the matrix multiplications (2 FLOPs per multiply-add), as MFU conventions do: the
embedding projection, each encoder layer's Q/K/V/output projections, feed-forward and attention
(scores and weighted values), the pooler and the task heads. Element-wise work (softmax,
LayerNorm, GELU, embedding lookups) is left out: it is a few percent at these shapes. The
backward pass costs twice the forward (gradients for inputs and for weights), so a training
step is 3x the forward.

Example:
    >>> count = albert_flops(architecture(model.backbone), sequence_length=128, num_outputs=2)
    >>> count.training * batch_size   # FLOPs of one training step of full-length examples
"""

from dataclasses import dataclass

import numpy as np

BACKWARD_FACTOR = 2  # backward = 2x forward


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs of one example, by part."""

    embedding: int   # embedding_dim -> hidden_dim projection
    encoder: int     # dense projections of every encoder layer call (Q, K, V, O, FFN)
    attention: int   # Q K^T and attention x V of every layer call
    heads: int       # pooler, classifier / sentence-order head, masked-LM head

    @property
    def forward(self) -> int:
        return self.embedding + self.encoder + self.attention + self.heads

    @property
    def training(self) -> int:
        """Forward + backward FLOPs of one example."""
        return self.forward * (1 + BACKWARD_FACTOR)


def albert_flops(
    model,
    sequence_length: int,
    num_outputs: int = 2,
    vocabulary_size: int = 0,
    mask_positions: int = 0,
) -> FlopCount:
    """Forward FLOPs of one example through an AlbertBackbone and its task heads.

    Shared weights (`num_groups` < `num_layers`) save parameters, not compute: every one of
    the `num_layers * num_inner_repetitions` layer calls is counted.

    Args:
        model: the architecture (num_layers, num_inner_repetitions, embedding_dim, hidden_dim,
            intermediate_dim): `architecture(backbone)`, or a `model` config without a preset.
        sequence_length: tokens per example (padded length: the compute actually spent).
        num_outputs: classes of the classifier head (2 for the sentence-order head).
        vocabulary_size: the masked-LM output size (pretraining only).
        mask_positions: masked-LM predictions per example (pretraining: `data.max_predictions`).
    """
    length, hidden = sequence_length, model["hidden_dim"]
    calls = model["num_layers"] * model.get("num_inner_repetitions", 1)
    embedding = 2 * length * model["embedding_dim"] * hidden
    per_token = 4 * hidden * hidden + 2 * hidden * model["intermediate_dim"]
    encoder = calls * 2 * length * per_token
    attention = calls * 2 * 2 * length * length * hidden
    heads = 2 * hidden * hidden + 2 * hidden * num_outputs  # pooler + classifier
    if mask_positions:
        # AlbertMaskedLM's head: hidden -> embedding_dim dense, then the tied embedding matrix.
        embed = model["embedding_dim"]
        heads += mask_positions * (2 * hidden * embed + 2 * embed * vocabulary_size)
    return FlopCount(embedding, encoder, attention, heads)


def architecture(backbone) -> dict:
    """The shape of a built AlbertBackbone (a preset's own, whatever the `model` config says)."""
    config = backbone.get_config()
    keys = ("num_layers", "num_inner_repetitions", "embedding_dim", "hidden_dim",
            "intermediate_dim")
    return {key: config[key] for key in keys}


def batch_flops(model, lengths, width: int, num_outputs: int = 2, vocabulary_size: int = 0,
                mask_positions: int = 0, training: bool = True) -> tuple[int, int]:
    """FLOPs of one batch: (padded, real).

    Padded: every example at the batch's `width` (the compute actually spent); real: each
    example at its own length (`lengths`, its unpadded tokens), as if nothing were padded.

    Args:
        model: the architecture (see `albert_flops`).
        lengths: tokens of each example (e.g. the row sums of `padding_mask`).
        width: the batch's padded length.
        training: forward + backward (else forward only).
    """
    def per_example(length: int) -> int:
        count = albert_flops(model, int(length), num_outputs, vocabulary_size, mask_positions)
        return count.training if training else count.forward

    values, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    real = sum(per_example(v) * int(c) for v, c in zip(values, counts, strict=True))
    return per_example(width) * int(counts.sum()), real
