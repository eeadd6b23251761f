"""Dynamic n-gram masking for masked-LM pretraining, in tf.data ops (seeded, per example).

keras-hub's MaskedLMMaskGenerator masks single tokens and takes no seed, hence this.

ALBERT masks whole n-grams of words (n <= 3, P(n) proportional to 1/n), about 15% of the tokens,
at most `max_predictions` per sequence; each chosen token becomes [MASK] (80%), a random token
(10%) or stays (10%). Here each segment's words are cut into consecutive spans of n words
(n drawn from P(n)); spans are visited in random order and taken whole until about 15% of the
tokens are chosen, by a rule that does not favour short or long spans. What starts a word is
app.data.text.word_units' rule for the vocabulary's kind (Google's: every CJK piece is a word).
Special and padding tokens are never chosen. All randomness comes from stateless ops on a
per-example seed.
"""

import tensorflow as tf

from app.data.text import word_starts
from app.data.text.word_units import WHOLE_WORD_FLAG
from app.data.tokenizer import SPECIAL_PIECES
from app.data.wordpiece import SPECIAL_TOKENS

NUM_SEGMENTS = 2


class NGramMasker:
    """Masks one packed example: `masker(features, seed) -> (x, y, sample_weight)`.

    Args:
        vocabulary: the SentencePiece or WordPiece pieces, index = token id.
        masked_lm_prob: fraction of the (non-special) tokens to predict.
        max_predictions: the most tokens predicted per sequence (output width).
        max_ngram: the longest n-gram (in words).
        mask_token_rate: share of chosen tokens replaced by [MASK].
        random_token_rate: share replaced by a random non-special token (the rest stay).

    Example:
        >>> masker = NGramMasker(tokenizer.get_vocabulary(), max_predictions=20)
        >>> x, y, weights = masker(features, seed=tf.constant([7, 0], tf.int64))
    """

    def __init__(
        self,
        vocabulary: list[str],
        masked_lm_prob: float = 0.15,
        max_predictions: int = 20,
        max_ngram: int = 3,
        mask_token_rate: float = 0.8,
        random_token_rate: float = 0.1,
    ):
        special = {vocabulary.index(p) for p in (*SPECIAL_PIECES, *SPECIAL_TOKENS)
                   if p in vocabulary}
        self.mask_id = vocabulary.index("[MASK]")
        self.masked_lm_prob = masked_lm_prob
        self.max_predictions = max_predictions
        self.mask_token_rate = mask_token_rate
        self.random_token_rate = random_token_rate
        self.maskable = tf.constant([i not in special for i in range(len(vocabulary))])
        self.word_start = tf.constant(word_starts(vocabulary))
        self.random_ids = tf.constant(
            [i for i in range(len(vocabulary)) if i not in special], tf.int32)
        # log P(n) up to a constant, P(n) = (1/n) / sum_k (1/k).
        self.ngram_logits = tf.math.log(1.0 / tf.range(1, max_ngram + 1, dtype=tf.float32))

    def word_starts(self, token_ids):
        """(starts a word, maskable) per token: the vocabulary's rule, unless a segmenter flagged
        the token as continuing a word (WHOLE_WORD_FLAG); a token after a special one starts."""
        continues = token_ids >= WHOLE_WORD_FLAG
        token_ids = token_ids % WHOLE_WORD_FLAG
        maskable = tf.gather(self.maskable, token_ids)
        previous = tf.concat([[False], maskable[:-1]], axis=0)
        starts = maskable & ((tf.gather(self.word_start, token_ids) & ~continues) | ~previous)
        return starts, maskable

    def select_spans(self, token_ids, segment_ids, seed):
        """Choose whole n-grams to mask in one sequence.

        Returns:
            (chosen tokens [L] bool, words per span [S] int32, span chosen [S] bool), where
            spans with 0 words do not exist. At least one span is chosen when any fits.
        """
        length = tf.shape(token_ids)[0]
        num_spans = NUM_SEGMENTS * length
        span_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        starts, maskable = self.word_starts(token_ids)
        word_index = tf.cumsum(tf.cast(starts, tf.int32)) - 1
        segment_ids = tf.cast(segment_ids, tf.int32)
        words_per_segment = tf.math.unsorted_segment_sum(
            tf.cast(starts, tf.int32), segment_ids, NUM_SEGMENTS)
        local_word = word_index - tf.gather(tf.cumsum(words_per_segment, exclusive=True),
                                            segment_ids)
        # Consecutive spans of n words per segment: span k ends after sum(n_1..n_k) words.
        ngram = tf.random.stateless_categorical(
            tf.tile(self.ngram_logits[None], [NUM_SEGMENTS, 1]), length, span_seed,
            dtype=tf.int32) + 1
        span_ends = tf.cumsum(ngram, axis=1)
        local_span = tf.searchsorted(span_ends, tf.tile(local_word[None], [NUM_SEGMENTS, 1]),
                                     side="right")
        local_span = tf.gather(tf.transpose(local_span), segment_ids, batch_dims=1)
        span = tf.where(maskable, segment_ids * length + local_span, num_spans)
        tokens_per_span = tf.math.unsorted_segment_sum(
            tf.ones_like(span), span, num_spans + 1)[:-1]
        words_per_span = tf.math.unsorted_segment_sum(
            tf.cast(starts, tf.int32), span, num_spans + 1)[:-1]
        # A span longer than max_predictions can never be taken: treat it as absent.
        exists = (tokens_per_span > 0) & (tokens_per_span <= self.max_predictions)

        # Visit spans in random order; take a span when the tokens taken before it are below
        # the target. The target is lowered by the expected overshoot of the last span taken
        # E[c^2]/(2 E[c]), so about `masked_lm_prob` of the tokens are chosen on average and
        # whether a span is taken does not depend on its own length (P(n) is kept).
        maskable_count = tf.reduce_sum(tf.cast(maskable, tf.float32))
        counts = tf.cast(tokens_per_span, tf.float32)
        spans = tf.maximum(tf.reduce_sum(tf.cast(exists, tf.float32)), 1.0)
        mean = tf.reduce_sum(counts) / spans
        overshoot = tf.reduce_sum(counts * counts) / spans / tf.maximum(mean, 1.0) / 2.0
        target = tf.minimum(maskable_count * self.masked_lm_prob, float(self.max_predictions))
        threshold = tf.maximum(target - overshoot, 0.5)
        score = tf.where(exists, tf.random.stateless_uniform([num_spans], order_seed), 2.0)
        order = tf.argsort(score)
        counts = tf.gather(tokens_per_span, order)
        chosen = self._take_in_order(counts, tf.reduce_sum(tf.cast(exists, tf.int32)), threshold)
        span_chosen = tf.gather(chosen, tf.argsort(order))
        token_chosen = tf.gather(tf.concat([span_chosen, [False]], axis=0), span)
        return token_chosen, words_per_span, span_chosen

    def _take_in_order(self, counts, num_existing, threshold):
        """Spans taken, visiting `counts` (tokens per span, existing spans first) in order.

        A span is taken while the tokens taken so far are below `threshold` and it fits in
        `max_predictions` with them. Only taken spans count: a span too long for what is left
        is skipped and a shorter one after it can still be taken.
        """

        def visit(index, taken, chosen):
            fits = taken + counts[index] <= self.max_predictions
            chosen = tf.tensor_scatter_nd_update(chosen, [[index]], [fits])
            return index + 1, taken + tf.where(fits, counts[index], 0), chosen

        def more(index, taken, chosen):
            return (index < num_existing) & (tf.cast(taken, tf.float32) < threshold)

        _, _, chosen = tf.while_loop(
            more, visit, (tf.constant(0), tf.constant(0), tf.zeros_like(counts, tf.bool)))
        return chosen

    def __call__(self, features: dict, seed):
        """Mask one example (unbatched `token_ids`, `segment_ids`, `padding_mask`, `sop_label`).

        Args:
            features: one packed example.
            seed: int64 [2] stateless seed.

        Returns:
            x with masked `token_ids` and `mask_positions`; y with `mlm` (original ids at the
            positions) and `sop`; sample weights (`mlm`: 1 for real predictions, 0 for padding;
            `sop`: the example's `sop_weight`, 1 without one).
        """
        flagged = tf.cast(features["token_ids"], tf.int32)
        span_seed, replace_seed, random_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3))
        chosen, _, _ = self.select_spans(flagged, features["segment_ids"], span_seed)
        token_ids = flagged % WHOLE_WORD_FLAG  # the segmenter's flags never reach the model
        length = tf.shape(token_ids)
        draw = tf.random.stateless_uniform(length, replace_seed)
        random_tokens = tf.gather(self.random_ids, tf.random.stateless_uniform(
            length, random_seed, maxval=tf.shape(self.random_ids)[0], dtype=tf.int32))
        masked = tf.where(chosen & (draw < self.mask_token_rate), self.mask_id, token_ids)
        masked = tf.where(
            chosen & (draw >= self.mask_token_rate)
            & (draw < self.mask_token_rate + self.random_token_rate), random_tokens, masked)

        positions = tf.cast(tf.where(chosen)[:, 0], tf.int32)[: self.max_predictions]
        padding = [[0, self.max_predictions - tf.shape(positions)[0]]]
        x = {
            "token_ids": masked,
            "segment_ids": features["segment_ids"],
            "padding_mask": features["padding_mask"],
            "mask_positions": tf.ensure_shape(tf.pad(positions, padding),
                                              [self.max_predictions]),
        }
        labels = tf.pad(tf.gather(token_ids, positions), padding)
        weights = tf.pad(tf.ones_like(positions, tf.float32), padding)
        y = {"mlm": tf.ensure_shape(labels, [self.max_predictions]), "sop": features["sop_label"]}
        sample_weight = {"mlm": tf.ensure_shape(weights, [self.max_predictions]),
                         "sop": tf.cast(features.get("sop_weight", 1.0), tf.float32)}
        return x, y, sample_weight
