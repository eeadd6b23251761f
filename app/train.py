"""Fine-tune ALBERT: `python -m app [overrides]` composes `conf/` and runs `train(cfg)`."""

import logging
import math
import sys
import time
from pathlib import Path

import hydra
import keras
import keras_hub
import tensorflow as tf
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from app.callbacks import (
    FullEvaluation,
    HParamsSummary,
    ProgressLog,
    flat_hparams,
    instantiate_callbacks,
)
from app.config import optimized_metric, register_configs, validate
from app.data.pipeline import build_dataset
from app.data.task import load_task_data
from app.errors import AppError
from app.models.classifier import build_task_model, task_loss, task_train_metrics
from app.optim import build_optimizer
from app.run_dir import capture_env, export_run, write_json, write_status
from app.strategy import build_strategy
from app.tokenizer import build_tokenizer

log = logging.getLogger(__name__)
register_configs()

SAMPLE_PREDICTIONS = 8
# Absolute, so Hydra reads the repo's conf/ whether started as `python -m app` or `albert-train`.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _start_session(cfg: DictConfig) -> None:
    """Every run starts clean: fresh Keras session, seeds, float32 policy, optional determinism."""
    keras.utils.clear_session(free_memory=True)
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(cfg.seed)
    if cfg.trainer.deterministic:
        tf.config.experimental.enable_op_determinism()


def _fit(cfg: DictConfig, run_dir: Path) -> dict:
    started = time.perf_counter()
    _start_session(cfg)
    strategy = build_strategy(cfg.strategy)

    task, train_split, eval_split = load_task_data(cfg.data)
    log.info("Task: %s, %d train / %d eval examples, labels %s", task.kind, len(train_split),
             len(eval_split), list(task.label_names))
    texts = [text for column in train_split.texts for text in column]
    tokenizer = build_tokenizer(cfg, texts, run_dir / "tokenizer")
    preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(
        tokenizer, sequence_length=cfg.data.sequence_length
    )
    batch_size = cfg.trainer.batch_size
    train_data = build_dataset(train_split, preprocessor, batch_size, cfg.data.shuffle_buffer,
                               cfg.seed)
    eval_data = build_dataset(eval_split, preprocessor, batch_size)
    steps_per_epoch = math.ceil(len(train_split) / batch_size)

    with strategy.scope():
        model = build_task_model(cfg.model, task, tokenizer.vocabulary_size())
        loss = task_loss(task)
        model.compile(
            optimizer=build_optimizer(cfg.optimizer, steps_per_epoch * cfg.trainer.epochs),
            loss=loss,
            metrics=task_train_metrics(task),
            jit_compile=cfg.trainer.jit_compile,
            steps_per_execution=cfg.trainer.steps_per_execution,
        )
    write_json(run_dir / "env.json", capture_env(strategy, cfg.seed))
    write_json(run_dir / "labels.json", list(task.label_names))

    monitor = optimized_metric(cfg)
    runtime = {"monitor": monitor, "mode": "max" if cfg.direction == "maximize" else "min"}
    evaluation = FullEvaluation(eval_data, eval_split.targets, task, loss)
    progress = ProgressLog(batch_size, steps_per_epoch, cfg.trainer.epochs,
                           cfg.trainer.log_every_n_steps)
    callbacks = [
        evaluation,
        *instantiate_callbacks(cfg.callbacks, run_dir, runtime),
        *instantiate_callbacks(cfg.logger, run_dir, runtime),
        HParamsSummary(run_dir / "tensorboard", flat_hparams(cfg)),
        progress,
    ]
    history = model.fit(train_data, epochs=cfg.trainer.epochs, callbacks=callbacks,
                        shuffle=False, verbose=0)

    samples = eval_split.features[:SAMPLE_PREDICTIONS] if len(eval_split.texts) == 1 else tuple(
        column[:SAMPLE_PREDICTIONS] for column in eval_split.texts)
    export_run(model, preprocessor, run_dir, task.label_names, samples)
    metrics = {
        "history": {name: [float(v) for v in values] for name, values in history.history.items()},
        "final": evaluation.latest,
        "optimized_metric": {"name": monitor, "value": evaluation.latest[monitor],
                             "direction": cfg.direction},
        "train_examples_per_second": len(train_split) * cfg.trainer.epochs / progress.train_seconds,
        "wall_seconds": time.perf_counter() - started,
    }
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Validate, train, evaluate and export one run into `run_dir`; return its metrics.

    The folder's `status.json` says `running`, then `completed`, or `failed` with the error.

    Args:
        cfg: the composed config (see `conf/train.yaml`).
        run_dir: this run's own folder.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    write_status(run_dir, "running")
    try:
        validate(cfg)
        metrics = _fit(cfg, run_dir)
    except BaseException as error:
        write_status(run_dir, "failed", error=f"{type(error).__name__}: {error}")
        raise
    write_status(run_dir, "completed")
    final = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics["final"].items()))
    log.info("Completed in %.1fs at %.1f examples/s: %s", metrics["wall_seconds"],
             metrics["train_examples_per_second"], final)
    log.info("Run folder: %s", run_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Entry point of `python -m app` and `albert-train`; returns the optimized metric."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = train(cfg, run_dir)
    except AppError as error:
        log.error("%s", error)
        sys.exit(f"error: {error}")
    return metrics["optimized_metric"]["value"]
