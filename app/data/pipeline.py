"""tf.data pipelines: tokenize and pack once (cached), then shuffle, batch and prefetch."""

import tensorflow as tf

from app.data.task import Split

# Tokenizing many texts per call is far faster than one text per call.
TOKENIZE_CHUNK = 1024


def build_dataset(
    split: Split,
    preprocessor,
    batch_size: int,
    shuffle_buffer: int | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of (token_ids, segment_ids, padding_mask) features and targets.

    Tokenizing and packing run in a parallel map whose output is cached in memory, so epochs
    after the first do no tokenization. Shuffling (seeded, fresh order each epoch) happens after
    the cache.

    Args:
        split: texts and targets.
        preprocessor: a keras-hub text-classifier preprocessor (tokenize + pack).
        batch_size: the global batch size.
        shuffle_buffer: shuffle with this buffer; None keeps the file order (evaluation).
        seed: the shuffle seed.
    """
    dataset = tf.data.Dataset.from_tensor_slices((split.features, split.targets))
    dataset = (
        dataset.batch(TOKENIZE_CHUNK)
        .map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
        .cache()
        # unbatch() loses the cardinality; Keras needs it to know the epoch length.
        .apply(tf.data.experimental.assert_cardinality(len(split)))
    )
    if shuffle_buffer is not None:
        dataset = dataset.shuffle(
            min(shuffle_buffer, len(split)), seed=seed, reshuffle_each_iteration=True
        )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
