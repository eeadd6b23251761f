"""Data: readers, labels, tf.data pipelines, SentencePiece, synthetic sets, raw-text corpora."""
