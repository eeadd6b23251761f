"""The inference bench (`mode=predict`): the app's predict path against bare `model.predict`.

The job is built as for training (untrained weights: speed does not depend on them) and saved
as a completed run, so the model is loaded the way `albert-predict` loads it. The input is the
data's eval file (else its train file) repeated `bench.predict_copies` times. Each round times,
one after another under the same load: the app's inference (app.tasks.inference, what
`albert-predict` runs: read in chunks, tokenize, batch, forward; writing rows left out) with and
without length bucketing, then a bare keras-hub `model.predict` on the very batches each of them
ran, pre-tokenized and in memory. Reported: examples/s and tokens/s (real and padded), min /
median / max over the rounds, and the ratios per round.
"""

import logging
import time

import keras_hub
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from app.bench.bare import in_memory
from app.bench.run import format_rows, prepare, spread_text
from app.bench.timing import spread
from app.data.readers import CHUNK_ROWS, read_table
from app.data.task import text_columns
from app.data.writers import atomic_table
from app.errors import ConfigError
from app.runs.read import open_run
from app.runs.record import write_json, write_status
from app.tasks.inference import (
    BATCH_SIZE,
    PAD_MULTIPLE,
    Predictor,
    batch_rows,
    data_settings,
    features,
    load_model,
    read_chunks,
)

log = logging.getLogger(__name__)

MODES = {"bucketed": True, "full_length": False}


def input_file(cfg: DictConfig, out, copies: int):
    """The eval file (else the train file) of `cfg.data`, its rows repeated `copies` times."""
    data = cfg.data
    source = f"{data.dir}/{data.eval_file or data.train_file}"
    names = text_columns(data)
    table = read_table(source, data.format, names)
    path = out / f"predict_input.{data.format}"
    with atomic_table(path, data.format, names) as writer:
        rows = [dict(zip(names, values, strict=True))
                for values in zip(*(table.columns[n] for n in names), strict=True)]
        for _ in range(copies):
            writer.write_rows(rows)
    return path, len(table) * copies


def same_batches(predictor: Predictor, path, settings, bucketing: bool) -> tuple[list, dict]:
    """The batches `predictor` runs on the file, pre-tokenized, and their token counts."""
    batches, real, padded = [], 0, 0
    for table in read_chunks(path, settings, with_labels=False, chunk_rows=CHUNK_ROWS):
        inputs = predictor.tokenize(features(table, settings))
        lengths = inputs["padding_mask"].astype(bool).sum(axis=1)
        for rows, cut in batch_rows(lengths, inputs["token_ids"].shape[1],
                                    predictor.batch_size, bucketing):
            batches.append({name: values[rows, :cut] for name, values in inputs.items()})
            real += int(lengths[rows].sum())
            padded += len(rows) * cut
    return batches, {"real_tokens": real, "padded_tokens": padded}


def app_pass(predictor: Predictor, path, settings) -> float:
    """Seconds of the app's inference over the file: read, tokenize, batch, forward."""
    started = time.perf_counter()
    for table in read_chunks(path, settings, with_labels=False, chunk_rows=CHUNK_ROWS):
        predictor(features(table, settings))
    return time.perf_counter() - started


def bare_pass(bare, dataset: tf.data.Dataset) -> float:
    """Seconds of keras-hub's `model.predict` over pre-made batches."""
    started = time.perf_counter()
    bare.predict(dataset, verbose=0)
    return time.perf_counter() - started


def bench_predict(cfg: DictConfig) -> dict:
    """Build and save the app's model, time its inference against bare `model.predict`.

    Args:
        cfg: the composed `conf/bench.yaml` with `mode=predict`.
    """
    if cfg.data.task == "pretraining":
        raise ConfigError("`mode=predict` needs a fine-tuning data set (data.task "
                          "classification or regression). Received: data.task=pretraining")
    out, run, cfg, _, _, _, model, _ = prepare(cfg)
    options = cfg.bench
    batch_size = options.predict_batch_size or BATCH_SIZE
    # A completed run as albert-predict reads it: config, labels, tokenizer, weights.
    run.weights("best").parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(run.weights("best"))
    run.hydra_config.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run.hydra_config)
    write_status(run.root, "completed")
    path, examples = input_file(cfg, out, options.predict_copies)
    opened = open_run(run.root)
    settings = data_settings(opened, None, path)
    loaded = load_model(opened, "best")
    bare = keras_hub.models.AlbertTextClassifier(
        keras_hub.models.AlbertBackbone.from_config(loaded.backbone.get_config()),
        int(loaded.num_classes), preprocessor=None, activation=None)
    spec = {name: tf.TensorSpec([None, None], s.dtype) for name, s in loaded.input.items()}

    predictors, datasets, tokens = {}, {}, {}
    for name, bucketing in MODES.items():
        predictors[name] = Predictor(loaded, batch_size, bucketing)
        batches, tokens[name] = same_batches(predictors[name], path, settings, bucketing)
        datasets[name] = in_memory(batches, spec)
        log.info("Warming up %s inference (%d batches)", name, len(batches))
        app_pass(predictors[name], path, settings)
        bare_pass(bare, datasets[name])

    seconds = {f"{loop}_{name}": [] for loop in ("app", "bare") for name in MODES}
    for window in range(options.windows):
        log.info("Round %d/%d", window + 1, options.windows)
        for name in MODES:
            seconds[f"app_{name}"].append(app_pass(predictors[name], path, settings))
        for name in MODES:
            seconds[f"bare_{name}"].append(bare_pass(bare, datasets[name]))

    loops = {}
    for key, values in seconds.items():
        counts = tokens[key.split("_", 1)[1]]
        loops[key] = {
            "seconds": spread(values),
            "examples_per_second": spread([examples / s for s in values]),
            "real_tokens_per_second": spread([counts["real_tokens"] / s for s in values]),
            "padded_tokens_per_second": spread([counts["padded_tokens"] / s for s in values]),
        }

    def ratio(top: str, bottom: str) -> dict:
        return spread([b / a for a, b in zip(seconds[top], seconds[bottom], strict=True)])

    report = {
        "config": {"model": type(loaded).__name__, "data": cfg.data.name,
                   "sequence_length": cfg.data.sequence_length, "batch_size": batch_size,
                   "chunk_rows": CHUNK_ROWS, "pad_multiple": PAD_MULTIPLE},
        "input": str(path),
        "examples": examples,
        "tokens": tokens,
        "rounds": options.windows,
        **loops,
        "app_bucketed_over_full_length": ratio("app_bucketed", "app_full_length"),
        "app_over_bare_bucketed": ratio("app_bucketed", "bare_bucketed"),
        "app_over_bare_full_length": ratio("app_full_length", "bare_full_length"),
        "run_dir": str(run.root),
    }
    write_json(out / "bench.json", report)
    return report


def table(report: dict) -> str:
    """The inference report as a plain-text table (medians, with min-max over the rounds)."""
    config, tokens = report["config"], report["tokens"]
    rows = [
        ("input", f"{report['examples']} texts ({config['data']}), sequence_length "
                  f"{config['sequence_length']}, batch {config['batch_size']}, "
                  f"{report['rounds']} rounds"),
        ("real / padded tokens", ", ".join(
            f"{name} {t['real_tokens'] / t['padded_tokens']:.2f}" for name, t in tokens.items())),
    ]
    for key in ("app_bucketed", "app_full_length", "bare_bucketed", "bare_full_length"):
        loop = report[key]
        rows.append((f"{key.replace('_', ' ', 1)} examples/s",
                     f"{spread_text(loop['examples_per_second'], '{:.0f}')} (real tokens/s "
                     f"{loop['real_tokens_per_second']['median']:.0f}, padded "
                     f"{loop['padded_tokens_per_second']['median']:.0f})"))
    rows += [
        ("app bucketed / full length", spread_text(report["app_bucketed_over_full_length"],
                                                   "{:.2f}")),
        ("app / bare, bucketed", spread_text(report["app_over_bare_bucketed"], "{:.3f}")),
        ("app / bare, full length", spread_text(report["app_over_bare_full_length"], "{:.3f}")),
    ]
    return format_rows(rows)
