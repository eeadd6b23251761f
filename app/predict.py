"""`albert-predict`: predictions of a finished run on new texts, in a fresh process.

    albert-predict run=<run_dir> input=new.tsv output=preds.tsv
    albert-predict run=<run_dir> input=new.csv data.text_column=review output=preds.jsonl

Reads the input with the readers and text columns of training (`data.*` overridable; no label
column needed) and writes, per input row, the texts, the predicted label and one probability
per label (`prob_<label>`), or the `score` of a regression run. The output format follows its
suffix: .tsv, .csv or .jsonl. Inputs are predicted and written chunk by chunk.
"""

import csv
import json
import logging
import os
import tempfile
from pathlib import Path

from app.errors import ConfigError
from app.runs.read import open_run
from app.runtime.console import command
from app.tasks.inference import (
    SUFFIX_FORMATS,
    data_settings,
    features,
    load_model,
    predict_batches,
    read_inputs,
    softmax,
)

log = logging.getLogger(__name__)

class _Writer:
    """Rows out as TSV (tabs and newlines in texts become spaces), CSV or JSON lines."""

    def __init__(self, stream, fmt: str, columns: list[str]):
        self.stream, self.fmt, self.columns = stream, fmt, columns
        if fmt != "jsonl":
            self.csv = csv.writer(stream, delimiter="\t" if fmt == "tsv" else ",",
                                  quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL,
                                  lineterminator="\n")
            self.csv.writerow(columns)

    def write(self, row: dict) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        flat = {**row, **{f"prob_{k}": v for k, v in row.get("probabilities", {}).items()}}
        values = [flat[c] for c in self.columns]
        if self.fmt == "tsv":
            values = [" ".join(str(v).split()) if isinstance(v, str) else v for v in values]
        self.csv.writerow(values)


def predict(run_dir: str | Path, input_path: str | Path, output: str | Path,
            output_format: str | None = None, checkpoint: str = "export", batch_size: int = 64,
            progress: bool = True, overrides: dict | None = None) -> Path:
    """Predict every row of `input_path` with a finished run and write `output`.

    Args:
        run_dir: the run folder.
        input_path: a TSV, CSV or JSONL file with the run's text column(s).
        output: where to write; its suffix (.tsv, .csv, .jsonl) picks the format.
        output_format: `tsv`, `csv` or `jsonl`, to override the suffix.
        checkpoint: `export` (final model), `best` or `last` checkpoint.
        batch_size: examples per prediction batch.
        progress: show a progress bar.
        overrides: `data.*` settings replacing the run's (format, text_column,
            text_pair_column; None: as in training), e.g. `{"text_column": "review"}`.

    Returns:
        The output path. Classification rows hold `label` and `probabilities` (`prob_<label>`
        columns in TSV/CSV); regression rows hold `score`.
    """
    run = open_run(run_dir)
    output = Path(output)
    fmt = output_format or SUFFIX_FORMATS.get(output.suffix.lower())
    if fmt not in ("tsv", "csv", "jsonl"):
        raise ConfigError(f"cannot tell the output format from '{output}'. Received: "
                          f"output_format={output_format!r}; expected a .tsv, .csv or .jsonl "
                          f"output, or output_format=tsv|csv|jsonl")
    settings = data_settings(run, overrides, Path(input_path))
    table = read_inputs(input_path, settings, with_labels=False)
    texts = features(table, settings)
    names = [settings.text_column] + ([settings.text_pair_column]
                                      if settings.text_pair_column else [])
    labels = list(run.task.label_names)
    result = ["label", *(f"prob_{label}" for label in labels)] if labels else ["score"]
    model = load_model(run, checkpoint)

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=output.parent, suffix=".tmp", delete=False,
                                     encoding="utf-8", newline="") as stream:
        writer = _Writer(stream, fmt, names + result)
        for start, outputs in predict_batches(model, texts, batch_size, progress):
            scores = softmax(outputs) if labels else outputs.reshape(-1)
            for i, score in enumerate(scores):
                row = {name: str(texts[j][start + i]) for j, name in enumerate(names)}
                if labels:
                    row["label"] = labels[int(score.argmax())]
                    row["probabilities"] = dict(zip(labels, score.tolist(), strict=True))
                else:
                    row["score"] = float(score)
                writer.write(row)
    os.replace(stream.name, output)
    log.info("Wrote %d predictions to %s", len(table), output)
    return output


@command("predict")
def main(cfg) -> None:
    """`albert-predict run=<run_dir> input=<file> output=<file> [key=value ...]`."""
    predict(cfg.run, cfg.input, cfg.output, cfg.output_format, cfg.checkpoint, cfg.batch_size,
            cfg.progress, cfg.data)


if __name__ == "__main__":
    main()
