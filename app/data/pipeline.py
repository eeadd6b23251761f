"""tf.data pipelines: tokenize and pack once (cached), then shuffle, batch and prefetch."""

from collections.abc import Callable

import tensorflow as tf

from app.data.task import Split

# Tokenizing many texts per call is far faster than one text per call.
TOKENIZE_CHUNK = 1024
# Mixes the run seed with the epoch so each epoch's order depends on (seed, epoch) alone.
EPOCH_SEED_STRIDE = 1_000_003


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


def build_dataset(split: Split, preprocessor, batch_size: int) -> tf.data.Dataset:
    """Batches in file order (evaluation and prediction)."""
    return tokenized(split, preprocessor).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def epoch_stream(
    examples: tf.data.Dataset,
    count: int,
    batch_size: int,
    shuffle_buffer: int,
    seed: int,
    epochs: int,
    per_example: Callable | None = None,
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
        return shuffled.batch(batch_size)

    stream = tf.data.Dataset.range(epochs).flat_map(epoch_batches)
    return lambda start: stream.skip(start).prefetch(tf.data.AUTOTUNE)
