"""What every task hands to the shared training flow, step by step (see app.train).

A task is built from the run config and walked through its steps in the flow's order:

    task.read_data(layout)        read and check the data, record what the run needs (labels)
    task.build_tokenizer(layout)  the preset's, `tokenizer.proto`, or trained on the data; the
                                  lengths left null chosen from the data (`choose_lengths`)
    task.build_pipelines(strategy)  training batches (resumable by global batch index), their
                                    padding measured (`measure_padding`)
    task.build_model()            the compiled model (call under the strategy's scope)
    task.build_evaluation(model)  a callback adding `val_*` metrics to each epoch's logs
    task.export(model, layout)    the run's `export/` folder
"""

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import keras
import keras_hub
import tensorflow as tf
from omegaconf import DictConfig

from app.data.lengths import (
    COVERAGE,
    MULTIPLE,
    choose_boundaries,
    choose_sequence_length,
    quantile,
    truncated,
)
from app.data.pipeline import padding_counts
from app.models.backbone import position_table
from app.models.lora import enable_lora
from app.runs.layout import RunLayout
from app.runs.record import write_json, write_run_config
from app.training.optim import build_optimizer

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The training pipeline of a run.

    Attributes:
        batches: `start -> training batches from global batch index start` (see
            app.data.pipeline.epoch_stream), so a resumed run continues at the next batch.
        num_train: training examples per epoch.
        steps_per_epoch: training batches per epoch.
    """

    batches: Callable[[int], tf.data.Dataset]
    num_train: int
    steps_per_epoch: int


class Task(Protocol):
    """The steps of one task (fine-tuning or pretraining), in the order app.train calls them.

    Attributes:
        extra_metrics: more entries for metrics.json (e.g. the metrics before training).
    """

    extra_metrics: dict

    def read_data(self, layout: RunLayout) -> None: ...

    def build_tokenizer(self, layout: RunLayout) -> keras_hub.models.AlbertTokenizer: ...

    def build_pipelines(self, strategy: tf.distribute.Strategy) -> TrainingData: ...

    def build_model(self) -> keras.Model: ...

    def build_evaluation(self, model: keras.Model) -> keras.callbacks.Callback: ...

    def export(self, model: keras.Model, layout: RunLayout) -> Path: ...



def compile_for_training(model: keras.Model, cfg: DictConfig, steps_per_epoch: int,
                         **compile_args) -> keras.Model:
    """Compile a task model with the run's optimizer and schedule (over every epoch's steps),
    XLA and steps-per-execution settings; `compile_args` are its loss and metrics. With
    `model.lora_rank`, LoRA first: only the adapters and the head train."""
    enable_lora(model, cfg.model.lora_rank)
    model.compile(
        optimizer=build_optimizer(cfg.optimizer, steps_per_epoch * cfg.trainer.epochs,
                                  cfg.trainer.gradient_accumulation_steps),
        jit_compile=cfg.trainer.jit_compile,
        steps_per_execution=cfg.trainer.steps_per_execution,
        **compile_args,
    )
    return model


# Tasks whose labels follow length: length-grouped batches would each hold one kind of label
# (multi-label topics: micro-F1 0.80 -> 0.64; a tiny test tagger's word agreement on a long
# sentence 0.80+ -> 0.75).
LENGTH_LABELLED = ("multilabel", "token_classification")


def choose_lengths(cfg: DictConfig, layout: RunLayout, lengths: Callable[[], Sequence[int]],
                   longer: str = "truncated", minimum: int = MULTIPLE) -> dict | None:
    """Fill `data.padding`, `data.sequence_length` and `data.bucket_boundaries` left null (the
    last two from the training split's packed lengths, see app.data.lengths), log the choice
    and save it: the values in the run's config.yaml (what evaluation, albert-evaluate,
    albert-predict, the export and a resume read), how they were chosen in lengths.json.

    Args:
        cfg: the run config; its `data` node is filled in place.
        layout: the run folder.
        lengths: computes each training example's packed length (called only when needed).
        longer: what becomes of examples longer than the sequence length, for the log.
        minimum: the shortest sequence length to choose.

    Returns:
        The choice, for metrics.json; when all were set, the run's lengths.json (a resume of
        a run that chose them) or None.
    """
    data = cfg.data
    chosen = [key for key in ("padding", "sequence_length") if data[key] is None]
    if data.padding is None:
        data.padding = choose_padding(cfg)
    if data.task == "multilabel" and data.bucket_boundaries is None:
        # How many labels an example has follows its length (longer texts, more topics), so
        # length buckets make batches of one label count; on the shipped topics data they cut
        # micro-F1 from 0.80 to 0.65. Off unless set.
        data.bucket_boundaries = []
    boundaries_needed = data.padding == "buckets" and data.bucket_boundaries is None
    chosen += ["bucket_boundaries"] if boundaries_needed else []
    if data.sequence_length is not None and not boundaries_needed:
        if "padding" in chosen:
            write_run_config(cfg, layout)
        return json.loads(layout.lengths.read_text()) if layout.lengths.is_file() else None
    values = lengths()
    if data.sequence_length is None:
        data.sequence_length = choose_sequence_length(values, position_table(cfg.model),
                                                      minimum=minimum)
    if boundaries_needed:
        data.bucket_boundaries = choose_boundaries(values, data.sequence_length)
    elif data.bucket_boundaries and any(b >= data.sequence_length for b in data.bucket_boundaries):
        log.info("data.bucket_boundaries %s: only those below the chosen sequence length %d "
                 "apply", list(data.bucket_boundaries), data.sequence_length)
        data.bucket_boundaries = [b for b in data.bucket_boundaries if b < data.sequence_length]
    count = truncated(values, data.sequence_length)
    record = {"padding": data.padding, "sequence_length": data.sequence_length,
              "bucket_boundaries": (None if data.bucket_boundaries is None
                                    else list(data.bucket_boundaries)), "chosen": chosen,
              "examples": len(values), "longer": count, "coverage": 1 - count / len(values),
              "quantile": {"share": COVERAGE, "length": quantile(values, COVERAGE)}}
    log.info("data.sequence_length=%d (%s): %.1f%% of %d training examples fit whole (%.0f%% "
             "are <= %d tokens), %d longer are %s; data.padding=%s%s", data.sequence_length,
             "from the data" if "sequence_length" in chosen else "as set",
             100 * record["coverage"], len(values), 100 * COVERAGE, record["quantile"]["length"],
             count, longer, describe_padding(data), "" if data.padding == "longest" else
             " (chosen to pad least)" if "bucket_boundaries" in chosen else " (as set)")
    write_json(layout.lengths, record)
    write_run_config(cfg, layout)
    return record


def choose_padding(cfg: DictConfig) -> str:
    """`buckets` (a few batch shapes) under XLA, which compiles a program per shape, when
    `data.bucket_boundaries` is set, and for tasks whose labels follow length (multi-label:
    how many labels; token classification: where a window falls in its sentence), where
    batches of one length learn less; else `longest`."""
    xla = cfg.trainer.get("jit_compile") in (True, "auto")
    explicit = cfg.data.bucket_boundaries is not None
    return "buckets" if xla or explicit or cfg.data.task in LENGTH_LABELLED else "longest"


def describe_padding(data: DictConfig) -> str:
    """How batches are padded, for the log."""
    if data.padding == "longest":
        return "longest (batches of similar lengths, each cut to its longest example)"
    if data.bucket_boundaries:
        return f"buckets {list(data.bucket_boundaries)} (and {data.sequence_length})"
    return f"buckets [] (every batch padded to {data.sequence_length})"


def measure_padding(data: TrainingData) -> dict:
    """Real (non-pad) and padded tokens of the first epoch's training batches, logged, for
    metrics.json (its pass over the examples fills their cache, as the first epoch would)."""
    real, padded = padding_counts(data.batches(0).take(data.steps_per_epoch))
    log.info("Padding: %.1f%% of the training batches' tokens are real (%d of %d an epoch)",
             100 * real / padded, real, padded)
    return {"real_tokens": real, "padded_tokens": padded, "ratio": real / padded}
