"""What a pretraining corpus gives the model to learn from, measured and checked.

Text that the sentence splitter or the masker misreads trains without error and learns little
(on Chinese reviews the English rules found one sentence per review and masked 2.9% of the
tokens). So every run measures its own signal: documents, sentences per document, the kinds of
sentence-order pairs, the share of tokens actually masked and the tokens per word unit, logs
them in one line and warns when the masked share or the share of real pairs is off.
"""

import logging

import tensorflow as tf

from app.data.pretraining.masking import NGramMasker

log = logging.getLogger(__name__)

MASKED_SHARE_RANGE = (0.12, 0.18)  # warn outside (masked_lm_prob 0.15 +- 3 points)
MIN_PAIRED_SHARE = 0.5             # warn when fewer examples hold two segments of one document
SAMPLE_EXAMPLES = 1000             # examples masked to measure the masked share


def masking_stats(masker: NGramMasker, examples: tf.data.Dataset, seed: int,
                  limit: int = SAMPLE_EXAMPLES) -> dict:
    """Masked-token share, tokens per word unit and unmasked sequences on `limit` examples.

    Args:
        masker: the run's masker.
        examples: packed (unmasked) examples: `token_ids`, `segment_ids`, `padding_mask`.
        seed: the masks' seed.
        limit: how many examples to mask.
    """

    def measure(index, example):
        token_ids = tf.cast(example["token_ids"], tf.int32)
        chosen, _, _ = masker.select_spans(token_ids, example["segment_ids"],
                                           tf.stack([tf.constant(seed, tf.int64), index]))
        starts, maskable = masker.word_starts(token_ids)
        counts = [tf.reduce_sum(tf.cast(x, tf.int64)) for x in (chosen, maskable, starts)]
        return tf.stack([*counts, tf.cast(counts[0] == 0, tf.int64), tf.constant(1, tf.int64)])

    totals = (examples.take(limit).enumerate().map(measure)
              .reduce(tf.zeros([5], tf.int64), lambda total, row: total + row))
    masked, maskable, words, unmasked, measured = (int(n) for n in totals)
    return {"masked_share": masked / maskable if maskable else 0.0,
            "tokens_per_word_unit": maskable / words if words else 0.0,
            "sequences_without_mask": unmasked, "sequences_measured": measured}


def corpus_signal(documents: int, sentences: int, multi_sentence_documents: int,
                  examples: int, pairs: dict[str, int], masking: dict) -> dict:
    """The signal record (for metrics.json or a manifest) of one corpus split.

    Args:
        documents, sentences, multi_sentence_documents: what reading the corpus saw.
        examples: packed examples.
        pairs: examples of each kind (app.data.pretraining.sentence_order.count_pair_kinds).
        masking: `masking_stats` of the examples.
    """
    return {
        "documents": documents,
        "sentences_per_document": sentences / documents if documents else 0.0,
        "multi_sentence_documents": multi_sentence_documents,
        "examples": examples,
        "pair_kinds": pairs,
        # Examples whose two segments come from one document (sentence order to learn).
        "paired_share": 1 - pairs["random_next"] / examples if examples else 0.0,
        **masking,
    }


def report_signal(signal: dict, description: str) -> None:
    """One log line with the signal; a warning for a masked share or paired share off range."""
    log.info("%s: %d documents, %.2f sentences each (%d with 2+), %d examples, pair kinds %s, "
             "%.1f%% paired; masked %.1f%% of the tokens (%d of %d sequences unmasked), %.2f "
             "tokens per word unit", description, signal["documents"],
             signal["sentences_per_document"], signal["multi_sentence_documents"],
             signal["examples"], signal["pair_kinds"], 100 * signal["paired_share"],
             100 * signal["masked_share"], signal["sequences_without_mask"],
             signal["sequences_measured"], signal["tokens_per_word_unit"])
    low, high = MASKED_SHARE_RANGE
    if not low <= signal["masked_share"] <= high:
        log.warning("%s: masked %.1f%% of the tokens, outside %d-%d%%: the model gets %s "
                    "masked-LM signal than ALBERT's 15%% (%.1f tokens per word unit; is the "
                    "tokenizer's word rule right for this script?)", description,
                    100 * signal["masked_share"], 100 * low, 100 * high,
                    "less" if signal["masked_share"] < low else "more",
                    signal["tokens_per_word_unit"])
    if signal["paired_share"] < MIN_PAIRED_SHARE:
        log.warning("%s: only %.1f%% of the examples hold two segments of one document (the rest "
                    "a random B): sentence-order prediction learns little. Expected documents of "
                    "several sentences (blank lines, `data.document_pattern` or "
                    "`data.document_per_line`) that fit `data.sequence_length` in pairs",
                    description, 100 * signal["paired_share"])
