"""`albert-predict`: predictions of a finished run on new texts, in a fresh process.

    albert-predict run=<run_dir> input=new.tsv output=preds.tsv
    albert-predict run=<run_dir> input=new.csv data.text_column=review output=preds.jsonl

Reads the input with the readers and text columns of training (`data.*` overridable; no label
column needed) and writes, per input row, the texts, the predicted label and one probability
per label (`prob_<label>`), or the `score` of a regression run. A multi-label run writes
`labels` (every label whose sigmoid probability reaches the run's threshold, thresholds.json,
joined by its `data.label_separator`; JSONL: a list) and `prob_<label>` per label. The output
format follows its suffix: .tsv, .csv or .jsonl (TSV output is quoted TSV, which the readers
read back exactly: see `app.data.writers`). The input is streamed, predicted and written chunk
by chunk, texts of similar length batched together; the output appears only once complete.
"""

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from app.data.readers import CHUNK_ROWS, Table
from app.data.task import TaskSpec, text_columns
from app.data.writers import atomic_table
from app.errors import ConfigError, DataError
from app.runs.read import Run, open_run
from app.runtime.console import command
from app.tasks.inference import (
    BATCH_SIZE,
    SUFFIX_FORMATS,
    Predictor,
    Progress,
    data_settings,
    features,
    load_model,
    read_chunks,
    sigmoid,
    softmax,
)
from app.tasks.tagging_inference import predict_tagged, tag_texts
from app.training.metrics import multilabel_predictions

log = logging.getLogger(__name__)


def prediction_rows(table: Table, names: list[str], outputs: np.ndarray, labels: list[str],
                    fmt: str, task: TaskSpec | None = None) -> list[dict]:
    """One output row per input row: the texts, then `label` and `prob_<label>` columns
    (JSONL: a `probabilities` object), or the `score` of a regression run. A multi-label
    `task` gives `labels` (the labels at or above their thresholds, joined by its separator;
    JSONL: a list) and one sigmoid probability per label."""
    texts = [table.columns[name] for name in names]
    if not labels:
        return [{**{n: t[i] for n, t in zip(names, texts, strict=True)}, "score": float(v)}
                for i, v in enumerate(outputs.reshape(-1).tolist())]
    multilabel = task is not None and task.kind == "multilabel"
    if multilabel:
        probabilities = sigmoid(outputs)
        chosen = multilabel_predictions(outputs, task.thresholds).tolist()
    else:
        probabilities = softmax(outputs)
        predicted = probabilities.argmax(axis=-1).tolist()
    rows = []
    for i, scores in enumerate(probabilities.tolist()):
        row = {n: t[i] for n, t in zip(names, texts, strict=True)}
        if multilabel:
            on = [label for label, yes in zip(labels, chosen[i], strict=True) if yes]
            row["labels"] = on if fmt == "jsonl" else task.label_separator.join(on)
        else:
            row["label"] = labels[predicted[i]]
        if fmt == "jsonl":
            row["probabilities"] = dict(zip(labels, scores, strict=True))
        else:
            row.update(zip((f"prob_{label}" for label in labels), scores, strict=True))
        rows.append(row)
    return rows


def predict(run_dir: str | Path, input_path: str | Path, output: str | Path,
            output_format: str | None = None, checkpoint: str = "export",
            batch_size: int = BATCH_SIZE, progress: bool = True, overrides: dict | None = None,
            chunk_rows: int = CHUNK_ROWS, bucketing: bool = True) -> Path:
    """Predict every row of `input_path` with a finished run and write `output`.

    The input is streamed `chunk_rows` rows at a time and the predictions are written chunk by
    chunk to a temporary file beside `output`, renamed to `output` at the end: on any error
    nothing is left behind and an existing `output` is untouched. Every text reads back from
    the output with the app's readers as it was (TSV output is quoted TSV: see
    `app.data.writers`).

    Args:
        run_dir: the run folder.
        input_path: a TSV, CSV or JSONL file with the run's text column(s).
        output: where to write; its suffix (.tsv, .csv, .jsonl) picks the format.
        output_format: `tsv`, `csv` or `jsonl`, to override the suffix.
        checkpoint: `export` (final model), `best` or `last` checkpoint.
        batch_size: examples per prediction batch.
        progress: show a progress bar (with the time left).
        overrides: `data.*` settings replacing the run's (format, text_column,
            text_pair_column; None: as in training), e.g. `{"text_column": "review"}`.
        chunk_rows: input rows read, predicted and written at a time.
        bucketing: batch texts of similar token length, each batch padded to its longest
            (False: input order, every text padded to `data.sequence_length`).

    Returns:
        The output path. Classification rows hold `label` and `probabilities` (`prob_<label>`
        columns in TSV/CSV), multi-label rows `labels` and `probabilities`; regression rows
        hold `score`.
    """
    run = open_run(run_dir)
    output = Path(output)
    if run.task.kind == "token_classification":
        return predict_tagged(run, Path(input_path), output, output_format, checkpoint,
                              batch_size, progress)
    fmt = output_format or SUFFIX_FORMATS.get(output.suffix.lower())
    if fmt not in ("tsv", "csv", "jsonl"):
        raise ConfigError(f"cannot tell the output format from '{output}'. Received: "
                          f"output_format={output_format!r}; expected a .tsv, .csv or .jsonl "
                          f"output, or output_format=tsv|csv|jsonl")
    settings = data_settings(run, overrides, Path(input_path))
    chunks = read_chunks(input_path, settings, with_labels=False, chunk_rows=chunk_rows)
    columns, rows_of = row_predictor(run, settings, fmt, checkpoint, batch_size, bucketing)

    bar = Progress(input_path, settings.format, progress)
    with atomic_table(output, fmt, columns) as writer:
        for table in chunks:
            writer.write_rows(rows_of(table))
            bar.update(len(table))
    bar.close()
    log.info("Wrote %d predictions to %s", writer.rows, output)
    return output


def row_predictor(run: Run, settings, fmt: str, checkpoint: str, batch_size: int,
                  bucketing: bool) -> tuple[list[str], Callable[[Table], list[dict]]]:
    """The output columns of a (not token-classification) run, and a function giving the
    output rows of a table of its text columns (see `prediction_rows`).

    Args:
        run: the opened run.
        settings: its `data` settings (text columns), from `data_settings`.
        fmt: the output format (`jsonl`: labels and probabilities as a list and an object).
        checkpoint, batch_size, bucketing: as for `predict`.
    """
    names = text_columns(settings)
    task = run.task
    labels = list(task.label_names)
    first = "labels" if task.kind == "multilabel" else "label"
    result = [first, *(f"prob_{label}" for label in labels)] if labels else ["score"]
    predictor = Predictor(load_model(run, checkpoint), batch_size, bucketing)

    def rows_of(table: Table) -> list[dict]:
        outputs = predictor(features(table, settings))
        return prediction_rows(table, names, outputs, labels, fmt, task)

    return names + result, rows_of


def predict_texts(run_dir: str | Path, texts: Iterable, checkpoint: str = "export",
                  batch_size: int = BATCH_SIZE, bucketing: bool = True) -> list[dict]:
    """Predictions of a finished run for texts in memory: per text, the row `predict` writes
    to a `.jsonl` output (for the same texts in a file, the same values).

    Args:
        run_dir: the run folder.
        texts: strings; (text, text_pair) pairs for a sentence-pair run; for a
            token-classification run raw strings (cut into words as `albert-predict` cuts a
            line of text) or lists of tokens.
        checkpoint, batch_size, bucketing: as for `predict`.

    Returns:
        One dict per text: the text column(s) and `label` + `probabilities`
        (classification), `labels` + `probabilities` (multi-label), `score` (regression), or
        `text`, `tokens`, `tags` and `entities` (token classification).

    Example:
        >>> predict_texts(run_dir, ["a fine film ."])[0]["label"]
        'positive'
    """
    run = open_run(run_dir)
    if isinstance(texts, str | bytes) or not isinstance(texts, Iterable):
        raise ConfigError(f"`texts` must be a list of texts. Received: {type(texts).__name__}")
    texts = list(texts)  # a tuple, a pandas Series, a generator, ...
    if run.task.kind == "token_classification":
        return tag_texts(run, texts, checkpoint, batch_size)
    settings = data_settings(run, None)
    names = text_columns(settings)
    expected = "a string" if len(names) == 1 else "a (text, text_pair) pair of strings"
    for i, item in enumerate(texts):
        one = isinstance(item, str)
        pair = (isinstance(item, Sequence) and not one and len(item) == 2
                and all(isinstance(part, str) for part in item))
        if not (one if len(names) == 1 else pair):
            raise ConfigError(f"`texts[{i}]` must be {expected} for this run "
                              f"(data.text_pair_column={settings.text_pair_column!r}). "
                              f"Received: {item!r}")
        if any(not part.strip() for part in ([item] if one else item)):
            raise DataError(f"`texts[{i}]`: empty text. Received: {item!r}")  # as the readers
    if not texts:
        return []
    _, rows_of = row_predictor(run, settings, "jsonl", checkpoint, batch_size, bucketing)
    rows = []
    for start in range(0, len(texts), CHUNK_ROWS):  # the chunks `predict` would read
        chunk = texts[start:start + CHUNK_ROWS]
        columns = ({names[0]: list(chunk)} if len(names) == 1 else
                   {name: [item[j] for item in chunk] for j, name in enumerate(names)})
        rows += rows_of(Table(Path("<texts>"), columns, list(range(start, start + len(chunk)))))
    return rows


@command("predict")
def main(cfg) -> None:
    """`albert-predict run=<run_dir> input=<file> output=<file> [key=value ...]`."""
    predict(cfg.run, cfg.input, cfg.output, cfg.output_format, cfg.checkpoint, cfg.batch_size,
            cfg.progress, cfg.data, bucketing=cfg.bucketing)


if __name__ == "__main__":
    main()
