"""Sentence-order labels drawn per epoch: show a packed pair as A, B (label 0) or B, A (label 1).

Pairs are packed once, in document order; which of them are swapped is drawn afresh from each
example's stateless seed, so one pair is in order in one epoch and swapped in another. With a
fixed swap per pair, the sentence-order head learns the pairs by heart over several epochs
(WikiText-2, 5 epochs: training SOP accuracy rose to 0.72 while validation fell to 0.51).

A pair whose B comes from another document (`random_next`, see app.data.pretraining.pairs) has
no order: as in ALBERT it is labelled 1 ("not in order") every epoch and left A, B. Its weight in
the SOP loss is `random_b_weight` (`data.random_b_sop_weight`; 1 as in ALBERT, 0: the head learns
only from pairs that have an order, not to spot a B from another document).
"""

import tensorflow as tf

from app.data.pretraining.masking import NGramMasker

SOP_IN_ORDER, SOP_SWAPPED = 0, 1
SOP_SUBSETS = ("whole", "trimmed", "random_next")  # see pair_kinds


def draw_sentence_order(features: dict, seed, random_b_weight: float = 1.0) -> dict:
    """`[CLS] A [SEP] B [SEP]` kept or, with probability 1/2, turned into `[CLS] B [SEP] A [SEP]`.

    Args:
        features: one packed example (`token_ids`, `segment_ids`, `padding_mask`), A before B;
            with `random_next` 1, B is from another document and the pair is never swapped.
        seed: int64 [2] stateless seed.
        random_b_weight: the SOP loss weight of a pair with a random B.

    Returns:
        the example, possibly swapped, with `sop_label` (int32: 0 in order, 1 swapped or
        random B) and `sop_weight` (float32: 1, or `random_b_weight` for a random B).
    """
    token_ids, segment_ids = features["token_ids"], features["segment_ids"]
    real = tf.reduce_sum(tf.cast(features["padding_mask"], tf.int32))
    b_size = tf.reduce_sum(tf.cast(segment_ids, tf.int32))  # B and its [SEP]
    a_size = real - 1 - b_size  # A and its [SEP]
    swapped_tokens = tf.concat([token_ids[:1], token_ids[1 + a_size:real],
                                token_ids[1:1 + a_size], token_ids[real:]], axis=0)
    swapped_segments = tf.concat([tf.zeros([1 + b_size], segment_ids.dtype),
                                  tf.ones([a_size], segment_ids.dtype),
                                  tf.zeros_like(segment_ids[real:])], axis=0)
    swap = tf.random.stateless_uniform([], seed) < 0.5
    random_next = tf.cast(features.get("random_next", 0), tf.bool)
    swap = swap & ~random_next
    return {
        **features,
        "token_ids": tf.ensure_shape(tf.where(swap, swapped_tokens, token_ids), token_ids.shape),
        "segment_ids": tf.ensure_shape(tf.where(swap, swapped_segments, segment_ids),
                                       segment_ids.shape),
        "sop_label": tf.where(swap | random_next, SOP_SWAPPED, SOP_IN_ORDER),
        "sop_weight": tf.where(random_next, tf.constant(random_b_weight, tf.float32), 1.0),
    }


def pair_kinds(example: dict) -> dict:
    """Which subsets of the SOP metrics an example belongs to (bool scalars): `whole`
    (consecutive segments, no sentence cut), `trimmed` (a sentence cut, random B or not),
    `random_next` (B from another document). Examples without the flags count as whole."""
    trimmed = tf.cast(example.get("trimmed", 0), tf.bool)
    random_next = tf.cast(example.get("random_next", 0), tf.bool)
    return {"whole": ~trimmed & ~random_next, "trimmed": trimmed, "random_next": random_next}


def order_and_mask(masker: NGramMasker, random_b_weight: float = 1.0):
    """The per-example transform of pretraining: draw the sentence order, then the masks."""

    def transform(features: dict, seed):
        order_seed, mask_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        return masker(draw_sentence_order(features, order_seed, random_b_weight), mask_seed)

    return transform


def count_pair_kinds(examples: tf.data.Dataset) -> dict[str, int]:
    """How many of the (unbatched) examples fall in each subset of `pair_kinds`."""
    counts = examples.map(pair_kinds).reduce(
        {kind: tf.constant(0) for kind in SOP_SUBSETS},
        lambda total, kinds: {k: total[k] + tf.cast(kinds[k], tf.int32) for k in SOP_SUBSETS})
    return {kind: int(count) for kind, count in counts.items()}
