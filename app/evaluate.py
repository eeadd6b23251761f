"""`albert-evaluate`: task metrics of a finished run on any labelled file, in a fresh process.

    albert-evaluate run=<run_dir>                        # the run's own eval split
    albert-evaluate run=<run_dir> split=test             # <data.dir>/test.<format>
    albert-evaluate run=<run_dir> input=other.csv data.text_column=review split=other

Reads the file with the readers and column settings of training (each `data.*` key
overridable), uses the run's label names (a multi-label run: its label separator and stored
thresholds), and writes `eval_<split>.json` in the run folder
(training's `metrics.json` is never touched).
"""

import logging
import time
from pathlib import Path

import keras
import numpy as np

from app.data.readers import CHUNK_ROWS
from app.errors import ConfigError
from app.models.classifier import task_loss
from app.runs.read import open_run
from app.runs.record import write_json
from app.runtime.console import command
from app.tasks.inference import (
    BATCH_SIZE,
    Predictor,
    Progress,
    data_settings,
    features,
    load_model,
    read_chunks,
)
from app.tasks.tagging_inference import evaluate_tagged
from app.training.metrics import evaluate_predictions

log = logging.getLogger(__name__)

def eval_file(run_data, split: str | None) -> Path:
    """The file a split names: the training files for train/dev/eval, else <dir>/<split>.<fmt>."""
    directory = Path(run_data.dir)
    if split in (None, "dev", "eval", "validation"):
        return directory / run_data.eval_file
    if split == "train":
        return directory / run_data.train_file
    return directory / f"{split}.{run_data.format}"


def evaluate(run_dir: str | Path, input: str | Path | None = None, split: str | None = None,
             checkpoint: str = "export", batch_size: int = BATCH_SIZE, progress: bool = True,
             overrides: dict | None = None, chunk_rows: int = CHUNK_ROWS,
             bucketing: bool = True) -> dict:
    """Evaluate a finished run on a labelled file and write `eval_<split>.json` beside it.

    The file is streamed `chunk_rows` rows at a time; only the targets and model outputs
    (a few numbers per row) are kept for the metrics, never the texts.

    Args:
        run_dir: the run folder.
        input: the labelled file; default: the file `split` names in the run's data folder.
        split: the evaluation's name (and, without `data`, which file: train, dev or any
            `<name>` for `<data.dir>/<name>.<format>`); default: `input`'s file stem, or dev.
        checkpoint: `export` (final model), `best` or `last` checkpoint.
        batch_size: examples per prediction batch.
        progress: show a progress bar (with the time left).
        overrides: `data.*` settings replacing the run's (format, text_column,
            text_pair_column, label_column; None: as in training), e.g. `{"label_column": "stars"}`.
        chunk_rows: rows read and predicted at a time (the metrics do not depend on it).
        bucketing: batch texts of similar token length (see `app.tasks.inference.Predictor`).

    Returns:
        The evaluation record written to `eval_<split>.json`.
    """
    run = open_run(run_dir)
    path = Path(input) if input is not None else eval_file(run.config.data, split)
    name = split or (path.stem if input is not None else "dev")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"`split` names the output eval_<split>.json and must be letters, "
                          f"digits, - or _. Received: {name!r}")
    if run.task.kind == "token_classification":
        return evaluate_tagged(run, path, name, checkpoint, batch_size, progress, overrides)
    settings = data_settings(run, overrides, path)
    chunks = read_chunks(path, settings, with_labels=True, chunk_rows=chunk_rows)
    task = run.task

    started = time.perf_counter()
    predictor = Predictor(load_model(run, checkpoint), batch_size, bucketing)
    bar = Progress(path, settings.format, progress)
    targets, outputs = [], []
    for table in chunks:
        targets.append(task.targets(table, settings.label_column))
        outputs.append(predictor(features(table, settings)))
        bar.update(len(table))
    bar.close()
    targets, outputs = np.concatenate(targets), np.concatenate(outputs)
    loss = float(keras.ops.convert_to_numpy(task_loss(task)(targets, outputs)))
    record = {
        "run": str(run.path),
        "split": name,
        "file": str(path),
        "format": settings.format,
        "columns": {"text": settings.text_column, "text_pair": settings.text_pair_column,
                    "label": settings.label_column},
        "checkpoint": checkpoint,
        "num_examples": len(targets),
        "label_names": list(task.label_names),
        "metrics": {"loss": loss, **evaluate_predictions(task, targets, outputs)},
        "seconds": time.perf_counter() - started,
    }
    if task.kind == "multilabel":  # the run's stored thresholds (thresholds.json)
        record["thresholds"] = dict(zip(task.label_names, task.thresholds, strict=True))
    out = run.layout.evaluation(name)
    write_json(out, record)
    log.info("Wrote %s", out)
    return record


def evaluate_config(cfg) -> dict:
    """`evaluate` with the settings of a composed `conf/evaluate.yaml` (the command's and
    `app.api.evaluate`'s); returns the record written to `eval_<split>.json`."""
    return evaluate(cfg.run, cfg.input, cfg.split, cfg.checkpoint, cfg.batch_size,
                    cfg.progress, cfg.data, bucketing=cfg.bucketing)


@command("evaluate")
def main(cfg) -> None:
    """`albert-evaluate run=<run_dir> [input=<file>] [split=<name>] [key=value ...]`."""
    record = evaluate_config(cfg)
    metrics = " ".join(f"{k} {v:.4f}" for k, v in sorted(record["metrics"].items()))
    print(f"{record['split']} ({record['num_examples']} examples): {metrics}")


if __name__ == "__main__":
    main()
