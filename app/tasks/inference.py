"""Inference of a finished run: load its model, read a file as training did, predict.

Shared by `python -m app.evaluate` and `python -m app.predict`. Inputs are streamed in chunks
of `CHUNK_ROWS` rows (memory does not grow with the file); within a chunk the texts are
tokenized once, sorted by token length and batched with similar lengths, each batch padded
only to its longest text (rounded up to a multiple of `PAD_MULTIPLE`), and the outputs are put
back in input order.
"""

import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf
from scipy import special

from app.data.readers import CHUNK_ROWS, Table, count_lines, iter_tables
from app.data.task import text_columns
from app.errors import ConfigError
from app.models.classifier import build_task_model
from app.models.tagger import build_tagger
from app.runs.read import Run
from app.runtime import loading
from app.tasks.tokenizer import load_run_tokenizer

log = logging.getLogger(__name__)

# Data settings a tool may override; the run's training values are the defaults.
DATA_KEYS = ("format", "text_column", "text_pair_column", "label_column")
SUFFIX_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl"}
BATCH_SIZE = 256  # examples per inference batch (measured on albert_tiny: see predict's notes)
PAD_MULTIPLE = 8  # a bucketed batch is padded to its longest text rounded up to this
CHECKPOINTS = ("export", "best", "last")


def with_overrides(run: Run, overrides: Mapping | None,
                   keys: tuple[str, ...]) -> tuple[dict, dict]:
    """The run's `data` settings (a dict) with the command's `data.*` keys applied, and those
    keys (None values: as trained); a key outside `keys` is a ConfigError."""
    data = OmegaConf.to_container(run.config.data, resolve=True)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(keys))
    if unknown:
        raise ConfigError(f"unknown data setting {unknown[0]!r} for this run; expected one of "
                          f"{[f'data.{k}' for k in keys]}")
    data.update(overrides)
    return data, overrides


def data_settings(run: Run, overrides: Mapping | None, path: Path | None = None) -> DictConfig:
    """The run's `data` settings with the command's `data.*` keys applied (None: as trained).

    Without an explicit `data.format`, a file ending in .tsv, .csv or .jsonl is read in that
    format, anything else in the training format.
    """
    data, overrides = with_overrides(run, overrides, DATA_KEYS)
    if "format" not in overrides and path is not None:
        data["format"] = SUFFIX_FORMATS.get(Path(path).suffix.lower(), data["format"])
    if data["format"] not in SUFFIX_FORMATS.values():
        raise ConfigError(f"`data.format` must be one of {list(SUFFIX_FORMATS.values())}. "
                          f"Received: {data['format']!r}")
    trained_pairs = bool(run.config.data.text_pair_column)
    if bool(data["text_pair_column"]) != trained_pairs:
        raise ConfigError(
            f"the run was trained on {'sentence pairs' if trained_pairs else 'single sentences'}"
            f" (data.text_pair_column={run.config.data.text_pair_column!r}). Received: "
            f"data.text_pair_column={data['text_pair_column']!r}; expected "
            f"{'a second text column' if trained_pairs else 'null'}")
    return OmegaConf.create(data)


def read_chunks(path: str | Path, data: DictConfig, with_labels: bool,
                chunk_rows: int = CHUNK_ROWS) -> Iterator[Table]:
    """The text columns (and the label column) of `path`, `chunk_rows` rows at a time.

    DataError names file and line, when the reading reaches the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"input file does not exist. Received: '{path}'")
    names = text_columns(data) + ([data.label_column] if with_labels else [])
    return iter_tables(path, data.format, names, chunk_rows)


def features(table: Table, data: DictConfig) -> tuple[np.ndarray, ...]:
    """The text columns as string arrays, in the model's input order."""
    return tuple(np.array(table.columns[c], dtype=object) for c in text_columns(data))


def batch_rows(lengths: np.ndarray, width: int, batch_size: int,
               bucketing: bool) -> list[tuple[np.ndarray, int]]:
    """(rows, width) of each batch of one chunk of texts with these token `lengths`: sorted by
    length and cut to the longest (a multiple of PAD_MULTIPLE) with `bucketing`, else in input
    order at the full `width`."""
    order = np.argsort(lengths, kind="stable") if bucketing else np.arange(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        cut = width
        if bucketing:
            longest = max(int(lengths[rows].max()), 1)
            cut = min(width, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)
        batches.append((rows, cut))
    return batches


class Predictor:
    """Model outputs (logits, or scores) for raw texts, batched by token length.

    keras-hub's `predict` pads every text to the preprocessor's `sequence_length`; here a
    batch is cut to its longest text, so short texts cost less. Positions past a text's end are
    masked out, so the outputs equal those of `model.predict` (within float32 rounding).

    Args:
        model: a task model with its preprocessor attached (as `load_model` returns).
        batch_size: examples per forward pass.
        bucketing: sort by length and trim the padding; False: input order, full length.

    Example:
        >>> outputs = Predictor(load_model(run))((np.array(["a fine film ."], dtype=object),))
    """

    def __init__(self, model, batch_size: int = BATCH_SIZE, bucketing: bool = True):
        if model.preprocessor is None:
            raise ConfigError("the model has no preprocessor; expected a model from load_model")
        if batch_size < 1:
            raise ConfigError(f"`batch_size` must be >= 1. Received: {batch_size}")
        self.model, self.batch_size, self.bucketing = model, batch_size, bucketing
        self.dtypes = {name: spec.dtype for name, spec in model.input.items()}
        signature = {name: tf.TensorSpec([None, None], dtype)
                     for name, dtype in self.dtypes.items()}
        # One trace serves every batch shape (Keras' predict function would retrace per width).
        self._forward = tf.function(lambda x: model(x, training=False),
                                    input_signature=[signature])
        self._pack = None

    def tokenize(self, texts: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
        """Token ids, segment ids and padding mask at the preprocessor's full length."""
        if self._pack is None:
            preprocessor = self.model.preprocessor
            # Eagerly, keras-hub's packer costs ~0.6 ms a text (measured: 5.7 s for 10,000 SST-2
            # sentences); traced once, the same preprocessing takes 0.08 s.
            # A pair passed positionally comes back as a 1-tuple (x,): pass it as `x=`.
            self._pack = tf.function(
                lambda *segments: keras.utils.unpack_x_y_sample_weight(
                    preprocessor(x=segments[0] if len(segments) == 1 else segments))[0],
                input_signature=[tf.TensorSpec([None], tf.string)] * len(texts))
        packed = self._pack(*(tf.constant(list(column), dtype=tf.string) for column in texts))
        return {name: keras.ops.convert_to_numpy(packed[name]).astype(dtype)
                for name, dtype in self.dtypes.items()}

    def __call__(self, texts: tuple[np.ndarray, ...]) -> np.ndarray:
        """Outputs for one chunk of texts (one array per text column), in input order."""
        inputs = self.tokenize(texts)
        count, width = inputs["token_ids"].shape
        lengths = inputs["padding_mask"].astype(bool).sum(axis=1)
        outputs = None
        for rows, cut in batch_rows(lengths, width, self.batch_size, self.bucketing):
            batch = {name: values[rows, :cut] for name, values in inputs.items()}
            result = np.asarray(keras.ops.convert_to_numpy(self._forward(batch)),
                                dtype="float32")
            if outputs is None:
                outputs = np.empty((count, *result.shape[1:]), dtype="float32")
            outputs[rows] = result
        return outputs


class Progress:
    """A Keras progress bar (with the time left) over the rows of an input file.

    The total is estimated up front by counting the file's line breaks (one cheap pass over
    the bytes): exact for files with one row per line and no blank lines, an upper bound
    otherwise; the bar is closed at the true count.
    """

    def __init__(self, path: str | Path, fmt: str, enabled: bool = True):
        self.done = 0
        self.bar = None
        if enabled:
            total = max(count_lines(path) - (fmt != "jsonl"), 1)
            self.bar = keras.utils.Progbar(total, unit_name="example")

    def update(self, rows: int) -> None:
        """Count `rows` more rows done (the bar ends only at `close`)."""
        self.done += rows
        if self.bar is not None:
            self.bar.update(min(self.done, self.bar.target - 1))

    def close(self) -> None:
        """End the bar at the number of rows read."""
        if self.bar is not None:
            self.bar.target = max(self.done, 1)
            self.bar.update(self.done, finalize=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits, row by row."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Per-label probabilities from a multi-label model's logits."""
    return special.expit(np.asarray(logits, dtype="float32"))


def load_model(run: Run, checkpoint: str = "export") -> keras_hub.models.TextClassifier:
    """The run's model with its preprocessor, ready for `predict` on raw strings.

    Args:
        run: an opened run.
        checkpoint: `export` (the final model, `export/model.keras`, loaded with Keras' safe
            mode on), or `best` / `last` (the model rebuilt from the run's config and tokenizer,
            with `checkpoints/<name>.weights.h5`). `export` falls back to `best` when the run
            has no export.
    """
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"`checkpoint` must be one of {list(CHECKPOINTS)}. "
                          f"Received: {checkpoint!r}")
    model_file = run.layout.model
    if checkpoint == "export" and model_file.is_file():
        with warnings.catch_warnings():
            # Exports before optimizer-free exports (0.1) still hold the optimizer's variables.
            warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
            return loading.load_model(model_file, compile=False)
    name = "best" if checkpoint == "export" else checkpoint
    return _rebuild(run, run.layout.weights(name))


def _rebuild(run: Run, weights: Path) -> keras_hub.models.TextClassifier:
    """Rebuild the task model from the run's config and tokenizer and load `weights`."""
    if not weights.is_file():
        raise ConfigError(f"run '{run.path}' has neither export/model.keras nor '{weights.name}'; "
                          f"expected a finished run")
    log.info("Rebuilding the model from %s", weights)
    tokenizer = load_run_tokenizer(run.layout.tokenizer_dir)
    if run.task.kind == "token_classification":
        model = build_tagger(run.config.model, len(run.task.label_names),
                             tokenizer.vocabulary_size())
    else:
        model = build_task_model(run.config.model, run.task, tokenizer.vocabulary_size())
    model.preprocessor = model.preprocessor_cls(
        tokenizer, sequence_length=run.config.data.sequence_length)
    with warnings.catch_warnings():
        # Checkpoints also hold the optimizer's variables, which inference does not need.
        warnings.simplefilter("ignore", UserWarning)
        loading.load_weights(model, weights)
    return model
