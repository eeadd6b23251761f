"""TensorFlow SavedModel export: a serving signature from raw strings to probabilities.

The SavedModel holds the tokenizer (SentencePiece), the packer and the model, so TF Serving or
`tf.saved_model.load` use it with no code from this project; only `import tensorflow_text`
is needed to register the SentencePiece ops.

    import tensorflow as tf, tensorflow_text  # noqa: F401
    serve = tf.saved_model.load("<run>/export/saved_model").signatures["serving_default"]
    serve(text=tf.constant(["the plot was superb ."]))["probabilities"]

A multi-label run's signature gives sigmoid `probabilities` and a `labels` mask (1 per label
whose probability reaches the run's threshold, thresholds.json) instead.
"""

import logging
from pathlib import Path

import keras
import tensorflow as tf

log = logging.getLogger(__name__)

TEXT_INPUTS = ("text", "text_pair")
def serving_signature(model: keras.Model, label_names, num_inputs: int,
                      thresholds: tuple[float, ...] | None = None):
    """A tf.function from one or two string batches to outputs.

    Classification returns `probabilities` (softmax of the logits, one column per label),
    `label` (the predicted label name) and `label_id`; a multi-label model (`thresholds`)
    returns `probabilities` (sigmoid of each logit) and `labels`, an int32 mask [batch, labels]
    (1 where the probability reaches the label's threshold); regression returns `score`.

    Args:
        model: a keras-hub text classifier with its preprocessor attached.
        label_names: the class names (index = class id); empty for regression.
        num_inputs: 1 for single sentences, 2 for sentence pairs.
        thresholds: a multi-label model's probability threshold per label (None: single-label).
    """
    specs = [tf.TensorSpec([None], tf.string, name=name) for name in TEXT_INPUTS[:num_inputs]]
    names = tf.constant(list(label_names) or [""], dtype=tf.string)

    def serve(*texts):
        # By keyword: a positional (text, text_pair) tuple would be unpacked as (x, y).
        features = model.preprocessor(x=texts[0] if num_inputs == 1 else tuple(texts))
        outputs = model(features, training=False)
        if not label_names:
            return {"score": tf.reshape(outputs, [-1])}
        if thresholds is not None:
            probabilities = tf.sigmoid(tf.cast(outputs, tf.float32))
            mask = probabilities >= tf.constant(thresholds, tf.float32)
            return {"probabilities": probabilities, "labels": tf.cast(mask, tf.int32)}
        label_ids = tf.argmax(outputs, axis=-1, output_type=tf.int32)
        return {"probabilities": tf.nn.softmax(outputs, axis=-1),
                "label_id": label_ids,
                "label": tf.gather(names, label_ids)}

    return serve, specs


def export_saved_model(model: keras.Model, path: Path, label_names, num_inputs: int,
                       thresholds: tuple[float, ...] | None = None) -> Path:
    """Write a SavedModel at `path` with a `serving_default` signature on raw strings.

    Keras' ExportArchive tracks the model's variables and the tokenizer's SentencePiece
    resource; `model.export()` alone would serve preprocessed token ids, not strings.

    Args:
        model: the trained task model with its preprocessor attached.
        path: the SavedModel folder (a run's `export/saved_model`).
        label_names: the class names, empty for regression.
        num_inputs: 1 for single sentences, 2 for sentence pairs.
        thresholds: a multi-label model's probability threshold per label.
    """
    serve, specs = serving_signature(model, label_names, num_inputs, thresholds)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=specs)
    # TensorFlow's logger has a handler of its own: its "Assets written" line would show twice.
    tf.get_logger().handlers.clear()
    archive.write_out(str(path), verbose=False)
    log.info("SavedModel with a raw-string serving signature: %s", path)
    return path
