"""Fine-tuning (classification, sentence pairs, regression): data, tokenizer, model, export."""

import logging
import math
from pathlib import Path

import keras_hub
import tensorflow as tf
from omegaconf import DictConfig

from app.callbacks import FullEvaluation
from app.data.pipeline import build_dataset, epoch_stream, tokenized
from app.data.task import load_task_data
from app.job import TrainingJob
from app.models.classifier import build_task_model, task_loss, task_train_metrics
from app.optim import build_optimizer
from app.run_dir import export_run, write_json
from app.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

SAMPLE_PREDICTIONS = 8


def build_fine_tuning(
    cfg: DictConfig, run_dir: Path, strategy: tf.distribute.Strategy
) -> TrainingJob:
    """Read the labelled splits, build the tokenizer and pipelines, compile the classifier."""
    task, train_split, eval_split = load_task_data(cfg.data)
    log.info("Task: %s, %d train / %d eval examples, labels %s", task.kind, len(train_split),
             len(eval_split), list(task.label_names))
    write_json(run_dir / "labels.json", list(task.label_names))
    texts = [text for column in train_split.texts for text in column]
    tokenizer = build_tokenizer(cfg, texts, run_dir / "tokenizer")
    preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(
        tokenizer, sequence_length=cfg.data.sequence_length
    )
    batch_size = cfg.trainer.batch_size
    batches = epoch_stream(tokenized(train_split, preprocessor), len(train_split), batch_size,
                           cfg.data.shuffle_buffer, cfg.seed, cfg.trainer.epochs,
                           bucket_boundaries=cfg.data.bucket_boundaries)
    steps_per_epoch = math.ceil(len(train_split) / batch_size)

    with strategy.scope():
        model = build_task_model(cfg.model, task, tokenizer.vocabulary_size())
        loss = task_loss(task)
        model.compile(
            optimizer=build_optimizer(cfg.optimizer, steps_per_epoch * cfg.trainer.epochs,
                                      cfg.trainer.gradient_accumulation_steps),
            loss=loss,
            metrics=task_train_metrics(task),
            jit_compile=cfg.trainer.jit_compile,
            steps_per_execution=cfg.trainer.steps_per_execution,
        )
    evaluation = FullEvaluation(build_dataset(eval_split, preprocessor, batch_size),
                                eval_split.targets, task, loss)
    samples = tuple(column[:SAMPLE_PREDICTIONS] for column in eval_split.texts)

    def export(run_dir: Path) -> None:
        export_run(model, preprocessor, run_dir, task.label_names,
                   samples[0] if len(samples) == 1 else samples)

    return TrainingJob(model, batches, len(train_split), steps_per_epoch, evaluation, export)
