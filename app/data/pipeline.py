"""tf.data pipelines: tokenize and pack once (cached), then shuffle, batch and prefetch."""

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from app.data.task import Split

# Tokenizing many texts per call is far faster than one text per call.
TOKENIZE_CHUNK = 1024
# Mixes the run seed with the epoch so each epoch's order depends on (seed, epoch) alone.
EPOCH_SEED_STRIDE = 1_000_003
# Length grouping orders windows of this many batches by length (see length_grouped); 50 as
# transformers' group_by_length megabatches.
LENGTH_WINDOW = 50


def tokenized(split: Split, preprocessor) -> tf.data.Dataset:
    """(features, target) examples, tokenized and packed in a parallel map, cached in memory.

    Epochs after the first read the cache and do no tokenization.
    """

    def tokenize(x, y):
        features, targets = preprocessor(x, y)
        # An int32 mask (the backbone's input dtype): a bool tensor breaks Keras' first-batch
        # build under MirroredStrategy, which reduces that batch with a MEAN (no bool AddN).
        features["padding_mask"] = tf.cast(features["padding_mask"], "int32")
        return features, targets

    return (
        tf.data.Dataset.from_tensor_slices((split.features, split.targets))
        .batch(TOKENIZE_CHUNK)
        .map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
        .cache()
        # unbatch() loses the cardinality; Keras needs it to know the epoch length.
        .apply(tf.data.experimental.assert_cardinality(len(split)))
    )


def packed_lengths(split: Split, tokenizer) -> list[int]:
    """Each example's length as the preprocessor packs it, before truncation: its pieces (of
    both texts of a pair), `[CLS]` and a `[SEP]` after each text."""
    lengths = np.full(len(split), 1 + len(split.texts))
    for column in split.texts:
        pieces = (tf.data.Dataset.from_tensor_slices(column).batch(TOKENIZE_CHUNK)
                  .map(lambda texts: tokenizer(texts).row_lengths(),
                       num_parallel_calls=tf.data.AUTOTUNE))
        lengths += np.concatenate(list(pieces.as_numpy_iterator()))
    return lengths.tolist()


def padding_counts(batches: tf.data.Dataset) -> tuple[int, int]:
    """(real, padded) tokens of `batches`: the non-pad tokens, and every token as batched."""

    def count(features, *_):
        mask = features["padding_mask"]
        return tf.reduce_sum(tf.cast(mask, tf.int64)), tf.size(mask, tf.int64)

    real, padded = batches.map(count).reduce(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
        lambda total, batch: (total[0] + batch[0], total[1] + batch[1]))
    return int(real), int(padded)


def build_dataset(split: Split, preprocessor, batch_size: int) -> tf.data.Dataset:
    """Batches in file order (evaluation and prediction)."""
    return tokenized(split, preprocessor).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def length_grouped(
    shuffled: tf.data.Dataset, batch_size: int, seed, boundaries: list[int] | None = None
) -> tf.data.Dataset:
    """Batches of similar length, each cut to its longest example or to a bucket boundary.

    Every window of LENGTH_WINDOW batches' worth of (already shuffled) examples is ordered by
    length and batched, and the window's batches are shuffled (seeded): the epoch keeps the
    same examples and number of batches, the order depends on (seed, epoch) alone (step-exact
    resume holds). Padding is masked, so cutting it changes no output; it saves its compute.

    Args:
        shuffled: fixed-length (features, target) examples with a `padding_mask` feature; a
            target with one value per position is cut with the features.
        batch_size: the global batch size.
        seed: the epoch's shuffle seed.
        boundaries: None: ordered by length, each batch cut to its longest example (dynamic
            padding, as transformers' group_by_length): a shape per length, which graphs
            without XLA take as one (Keras traces a shape-generic step). Else ascending bucket
            lengths (the full sequence length is the last bucket): ordered by bucket, in random
            order within one, each batch cut to the smallest bucket holding its longest
            example: len(boundaries) + 1 shapes (a handful of XLA programs).
    """

    def order_window(window, features, targets):
        # Within a bucket in random order: sorting by the exact length gives batches of one
        # narrow length range, whose labels can follow length (multi-label topics: micro-F1
        # 0.80 -> 0.64), which is why such tasks pad by buckets by default (choose_padding).
        lengths = tf.reduce_sum(tf.cast(features["padding_mask"], tf.int32), axis=1)
        key = (lengths if boundaries is None else
               tf.searchsorted(tf.constant(boundaries, tf.int32), lengths, side="left"))
        noise = tf.random.stateless_uniform(tf.shape(lengths), tf.stack([seed, window]))
        order = tf.argsort(tf.cast(key, tf.float32) + noise, stable=True)
        return tf.nest.map_structure(lambda t: tf.gather(t, order), (features, targets))

    def cut(features, targets):
        longest = tf.reduce_max(tf.reduce_sum(features["padding_mask"], axis=1))
        length = longest
        if boundaries is not None:
            full = tf.shape(features["padding_mask"])[1]
            buckets = tf.concat([tf.constant(boundaries, tf.int32), [full]], axis=0)
            length = tf.reduce_min(tf.boolean_mask(buckets, buckets >= longest))
        if targets.shape.rank == 2:  # one target per position (token classification)
            targets = targets[:, :length]
        return {name: value[:, :length] for name, value in features.items()}, targets

    return (
        shuffled.batch(batch_size * LENGTH_WINDOW)
        .enumerate()
        .map(lambda window, example: order_window(window, *example))
        .unbatch()
        .batch(batch_size)
        .map(cut, num_parallel_calls=tf.data.AUTOTUNE)
        .shuffle(LENGTH_WINDOW, seed=seed, reshuffle_each_iteration=False)
    )


def epoch_stream(
    examples: tf.data.Dataset,
    count: int,
    batch_size: int,
    shuffle_buffer: int,
    seed: int,
    epochs: int,
    per_example: Callable | None = None,
    padding: str | None = None,
    bucket_boundaries: list[int] | None = None,
    class_weights: Sequence[float] | None = None,
) -> Callable[[int], tf.data.Dataset]:
    """A function `start -> batches of every epoch from global batch index `start` on`.

    Each epoch is shuffled with a seed derived from (`seed`, epoch), and `per_example(example,
    seed_pair)` (e.g. dynamic masking) gets the stateless seed (epoch seed, position), so the
    batch at any global index is the same in every process: a resumed run continues at exactly
    the next batch, and masks are fresh each epoch yet reproducible.

    Args:
        examples: cached examples (tokenized once).
        count: the number of examples.
        batch_size: the global batch size.
        shuffle_buffer: the shuffle buffer (capped at `count`).
        seed: the run seed.
        epochs: how many epochs the stream holds.
        per_example: an optional map applied after shuffling, with its seed.
        padding: `longest`: batches of similar lengths, each cut to its longest example;
            `buckets` (or None): cut to `bucket_boundaries` when there are any, else padded
            in full (see `length_grouped`).
        bucket_boundaries: the bucket lengths of `buckets` padding.
        class_weights: one weight per class id: batches become (features, targets,
            sample_weight), which Keras' loss weighs by; part of the dataset, so it is split
            across replicas with the batch under any tf.distribute strategy.
    """
    buffer = min(shuffle_buffer, count)

    def epoch_batches(epoch):
        epoch_seed = tf.constant(seed, tf.int64) * EPOCH_SEED_STRIDE + epoch
        shuffled = examples.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
        if per_example is not None:
            shuffled = shuffled.enumerate().map(
                lambda i, example: per_example(example, tf.stack([epoch_seed, i])),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        if padding == "longest":
            batched = length_grouped(shuffled, batch_size, epoch_seed)
        elif bucket_boundaries:
            batched = length_grouped(shuffled, batch_size, epoch_seed, list(bucket_boundaries))
        else:
            batched = shuffled.batch(batch_size)
        if class_weights is None:
            return batched
        weights = tf.constant(class_weights, tf.float32)
        return batched.map(lambda features, targets: (features, targets,
                                                      tf.gather(weights, targets)))

    stream = tf.data.Dataset.range(epochs).flat_map(epoch_batches)
    return lambda start: stream.skip(start).prefetch(tf.data.AUTOTUNE)
