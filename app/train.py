"""Train ALBERT: `python -m app [overrides]` composes `conf/` and runs `train(cfg)`.

The flow: validate -> strategy, session, seed -> the task's job (data, tokenizer, pipelines,
compiled model; app.finetune or app.pretraining) -> fit with checkpoints and resume -> export
-> metrics.json.
"""

import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import hydra
import keras
import tensorflow as tf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from app.callbacks import HParamsSummary, ProgressLog, flat_hparams, instantiate_callbacks
from app.config import optimized_metric, register_configs, validate
from app.errors import AppError
from app.finetune import build_fine_tuning
from app.instantiate import check_config
from app.pretraining.run import build_pretraining
from app.resume import (
    PREEMPTED_EXIT_CODE,
    STATE_DIR,
    EpochLog,
    Preempted,
    StepCheckpoint,
    fit_with_recovery,
    restore_latest,
    resumed_config,
)
from app.run_dir import capture_env, write_json, write_status
from app.strategy import build_strategy, check_global_batch, is_chief

log = logging.getLogger(__name__)
register_configs()

# Absolute, so Hydra reads the repo's conf/ whether started as `python -m app` or `albert-train`.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _start_session(cfg: DictConfig) -> None:
    """Every run starts clean: fresh Keras session, seeds, dtype policy, optional determinism."""
    keras.utils.clear_session(free_memory=True)
    keras.config.set_dtype_policy(cfg.trainer.precision)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.trainer.deterministic:
        tf.config.experimental.enable_op_determinism()


def _fit(cfg: DictConfig, run_dir: Path) -> dict:
    started = time.perf_counter()
    strategy = build_strategy(cfg.strategy)
    _start_session(cfg)
    check_global_batch(cfg.trainer.batch_size, strategy)

    build_job = build_pretraining if cfg.data.task == "pretraining" else build_fine_tuning
    job = build_job(cfg, run_dir, strategy)
    with strategy.scope():
        first_step = restore_latest(run_dir, job.model) if cfg.resume else 0
    env_file = f"env-resume-{first_step}.json" if cfg.resume else "env.json"
    write_json(run_dir / env_file, capture_env(strategy, cfg.seed))

    monitor = optimized_metric(cfg)
    runtime = {"monitor": monitor, "mode": "max" if cfg.direction == "maximize" else "min"}
    progress = ProgressLog(cfg.trainer.batch_size, job.steps_per_epoch, cfg.trainer.epochs,
                           cfg.trainer.log_every_n_steps)
    epochs_log = EpochLog(run_dir / "history.json")
    checkpoint = StepCheckpoint(run_dir / STATE_DIR, cfg.trainer.checkpoint_every_n_steps,
                                cfg.trainer.keep_checkpoints, first_step)
    callbacks = [
        job.evaluation,  # first: the callbacks below read its val_* entries
        *instantiate_callbacks(cfg.callbacks, run_dir, runtime),
        *instantiate_callbacks(cfg.logger, run_dir, runtime),
        HParamsSummary(run_dir / "tensorboard", flat_hparams(cfg), job.evaluation),
        progress,
        epochs_log,
        checkpoint,
    ]
    fit_with_recovery(job.model, job.batches, first_step, job.steps_per_epoch,
                      cfg.trainer.epochs, callbacks, checkpoint, cfg.trainer)

    job.export(run_dir)
    final = job.evaluation.latest
    metrics = {
        "history": epochs_log.history(),
        "final": final,
        "optimized_metric": {"name": monitor, "value": final[monitor], "direction": cfg.direction},
        "train_examples_per_second": job.num_train * progress.epochs_run / progress.train_seconds,
        "wall_seconds": time.perf_counter() - started,
        **job.extra_metrics,
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
    if not is_chief():
        # Non-chief workers train in step with the chief but write only to a scratch folder.
        run_dir = Path(tempfile.mkdtemp(prefix="albert-worker-"))
        log.info("Non-chief worker: writing to scratch folder %s", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_status(run_dir, "running")
    try:
        validate(cfg)
        check_config(cfg)
        metrics = _fit(cfg, run_dir)
    except Preempted as stop:
        write_status(run_dir, "preempted", step=stop.step)
        raise
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
    """Entry point of `python -m app` and `albert-train`; returns the optimized metric.

    In a multirun a failed job does not stop the process: its folder's status.json says
    `failed` with the error and the sweep goes on. The job returns NaN to Hydra's basic sweeper;
    under the Optuna sweeper it raises, which Optuna records as a failed trial (a NaN return
    would crash hydra-optuna-sweeper 1.3.0, which then tells Optuna FAIL *with* the value).
    """
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if cfg.resume:
            cfg = resumed_config(cfg.resume)
        metrics = train(cfg, run_dir)
    except Preempted as stop:
        log.warning("Stopped after step %d with a checkpoint; resume with resume=%s",
                    stop.step, run_dir)
        sys.exit(PREEMPTED_EXIT_CODE)
    except Exception as error:
        if multirun:
            log.error("Job failed, the sweep goes on: %s", error,
                      exc_info=not isinstance(error, AppError))
            if "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")):
                raise
            return math.nan
        if not isinstance(error, AppError):
            raise
        log.error("%s", error)
        # The traceback goes to train.log only; HYDRA_FULL_ERROR=1 shows it on the terminal too.
        logging.getLogger("app.traceback").debug("Traceback of the error above", exc_info=True)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {error}")
    return metrics["optimized_metric"]["value"]
