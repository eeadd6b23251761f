"""Inference of a finished run: load its model, read a file as training did, predict.

Shared by `python -m app.evaluate` and `python -m app.predict`.
"""

import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import keras
import keras_hub
import numpy as np
from omegaconf import DictConfig, OmegaConf

from app.data.readers import Table, read_table
from app.data.task import text_columns
from app.errors import ConfigError
from app.models.classifier import build_task_model
from app.runs.read import Run
from app.runtime import loading
from app.tasks.tokenizer import load_run_tokenizer

log = logging.getLogger(__name__)

# Data settings a tool may override; the run's training values are the defaults.
DATA_KEYS = ("format", "text_column", "text_pair_column", "label_column")
SUFFIX_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl"}
CHUNK_EXAMPLES = 4096
CHECKPOINTS = ("export", "best", "last")


def data_settings(run: Run, overrides: Mapping | None, path: Path | None = None) -> DictConfig:
    """The run's `data` settings with the command's `data.*` keys applied (None: as trained).

    Without an explicit `data.format`, a file ending in .tsv, .csv or .jsonl is read in that
    format, anything else in the training format.
    """
    data = OmegaConf.to_container(run.config.data, resolve=True)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(DATA_KEYS))
    if unknown:
        raise ConfigError(f"unknown data setting {unknown[0]!r}; expected one of "
                          f"{[f'data.{k}' for k in DATA_KEYS]}")
    data.update(overrides)
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


def read_inputs(path: str | Path, data: DictConfig, with_labels: bool) -> Table:
    """Read the text columns (and the label column) of `path`; DataError names file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"input file does not exist. Received: '{path}'")
    names = text_columns(data) + ([data.label_column] if with_labels else [])
    return read_table(path, data.format, names)


def features(table: Table, data: DictConfig) -> tuple[np.ndarray, ...]:
    """The text columns as string arrays, in the model's input order."""
    return tuple(np.array(table.columns[c], dtype=object) for c in text_columns(data))


def predict_batches(model, texts: tuple[np.ndarray, ...], batch_size: int,
                    progress: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Model outputs (logits, or scores) chunk by chunk, with a progress bar.

    Yields `(start, outputs)` for consecutive chunks of at most CHUNK_EXAMPLES inputs, so the
    caller can write results as they come instead of holding all of them.
    """
    total = len(texts[0])
    bar = keras.utils.Progbar(total, unit_name="example") if progress else None
    for start in range(0, total, CHUNK_EXAMPLES):
        chunk = tuple(column[start:start + CHUNK_EXAMPLES] for column in texts)
        outputs = model.predict(chunk[0] if len(chunk) == 1 else chunk, batch_size=batch_size,
                                verbose=0)
        if bar is not None:
            bar.update(start + len(chunk[0]))
        yield start, np.asarray(outputs)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits, row by row."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


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
            # The saved optimizer and compile settings are not needed for inference.
            warnings.simplefilter("ignore", UserWarning)
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
    model = build_task_model(run.config.model, run.task, tokenizer.vocabulary_size())
    model.preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(
        tokenizer, sequence_length=run.config.data.sequence_length)
    with warnings.catch_warnings():
        # Checkpoints also hold the optimizer's variables, which inference does not need.
        warnings.simplefilter("ignore", UserWarning)
        loading.load_weights(model, weights)
    return model
