"""`albert-train` (or `python -m app`): one training run, composed from `conf/train.yaml`.

Reads top to bottom as the run's flow: validate -> strategy, session -> data -> tokenizer ->
pipelines -> model under the strategy's scope -> fit with checkpoints and resume -> export ->
metrics.json. Every step is one call into the module that owns it.
"""

import logging
import tempfile
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from app.config.instantiate import check_config
from app.config.validate import optimized_metric, validate
from app.errors import Preempted, WorkerLost
from app.runs.layout import RunLayout
from app.runs.loggers import log_finished_run
from app.runs.record import (
    Heartbeat,
    capture_env,
    write_json,
    write_run_config,
    write_status,
)
from app.runtime.cluster import is_chief
from app.runtime.console import command, sweep_policy
from app.runtime.multi_worker import lost_worker_ends_run, meet_workers
from app.runtime.strategy import build_strategy, check_global_batch
from app.tasks import task_for
from app.training.best import restore_best
from app.training.callbacks import (
    EpochLog,
    HParamsSummary,
    ProgressLog,
    flat_hparams,
    instantiate_callbacks,
)
from app.training.checkpoints import CallbackMemory, StepCheckpoint
from app.training.fit import fit_with_recovery
from app.training.optim import learning_rate_factor, set_learning_rate_factor
from app.training.resume import restore_latest, resumed_config
from app.training.session import start_session

log = logging.getLogger(__name__)


def run_training(cfg: DictConfig, layout: RunLayout) -> dict:
    """The flow of one run, from a validated config to `metrics.json`; returns the metrics."""
    started = time.perf_counter()
    # === Strategy and session (before anything creates variables) ===
    strategy = build_strategy(cfg.strategy)
    start_session(cfg)
    check_global_batch(cfg.trainer.batch_size, strategy)
    meet_workers(cfg, strategy, layout.root)  # multi-worker: the same config on every worker

    # === Data, tokenizer, pipelines ===
    task = task_for(cfg)
    log.info("Reading data <%s> (%s)", cfg.data.name, cfg.data.task)
    task.read_data(layout)
    tokenizer = task.build_tokenizer(layout)
    log.info("Tokenizer: %d pieces", tokenizer.vocabulary_size())
    data = task.build_pipelines(strategy)

    # === Model, optimizer and compile, under the strategy ===
    with strategy.scope():
        log.info("Instantiating model <%s>", cfg.model.preset or cfg.model._target_)
        model = task.build_model()
        state = restore_latest(Path(cfg.resume), model) if cfg.resume else {"step": 0}
    if state.get("learning_rate_factor", 1.0) != 1.0:
        set_learning_rate_factor(model, state["learning_rate_factor"])
    first_step = state["step"]
    evaluation = task.build_evaluation(model)
    write_json(layout.env(first_step if cfg.resume else None), capture_env(strategy, cfg.seed))

    # === Fit, with checkpoints and resume ===
    monitor = optimized_metric(cfg)
    runtime = {"monitor": monitor, "mode": "max" if cfg.direction == "maximize" else "min"}
    progress = ProgressLog(cfg.trainer.batch_size, data.steps_per_epoch, cfg.trainer.epochs,
                           cfg.trainer.log_every_n_steps,
                           train_seconds=state.get("train_seconds", 0.0),
                           steps_run=state.get("steps_trained", 0))
    epochs_log = EpochLog(layout.history)
    hparams = HParamsSummary(layout.tensorboard, flat_hparams(cfg))
    configured = [
        evaluation,  # first: the callbacks below read its val_* entries
        *instantiate_callbacks(cfg.callbacks, layout.root, runtime),
        *instantiate_callbacks(cfg.logger, layout.root, runtime),
        hparams,
        progress,
        epochs_log,
    ]
    memory = CallbackMemory(configured, state.get("callbacks"))

    def state_meta() -> dict:
        return {"callbacks": memory.taken,
                "learning_rate_factor": learning_rate_factor(model.optimizer),
                "train_seconds": progress.train_seconds, "steps_trained": progress.steps_run}

    checkpoint = StepCheckpoint(layout.states, cfg.trainer.checkpoint_every_n_steps,
                                cfg.trainer.checkpoint_every_minutes,
                                cfg.trainer.keep_checkpoints, first_step, data.steps_per_epoch,
                                meta=state_meta)
    log.info("Training %d epochs of %d steps from step %d", cfg.trainer.epochs,
             data.steps_per_epoch, first_step)
    fit_with_recovery(model, data.batches, first_step, data.steps_per_epoch,
                      cfg.trainer.epochs, [*configured, memory, checkpoint], checkpoint,
                      memory, cfg.trainer)

    # === Export and metrics.json (of the best epoch, unless trainer.use_best=false) ===
    history = epochs_log.history()
    final_epoch, best_epoch = restore_best(model, history, cfg, layout.root)
    log.info("Exporting to %s", task.export(model, layout))
    # From history.json: a resume after the last epoch (killed during the export) trains and
    # evaluates nothing more, and reports what that epoch measured.
    final = {name: values[final_epoch] for name, values in history.items()
             if name.startswith("val_")}
    hparams.write_final(final)
    metrics = {
        "history": history,
        "final": final,
        "final_epoch": final_epoch + 1,  # 1-based, as in the log lines
        "best_epoch": best_epoch + 1,
        "optimized_metric": {"name": monitor, "value": final[monitor], "direction": cfg.direction},
        # Training batches only (no evaluation, no checkpoint saves), over every process.
        "train_examples_per_second": (
            data.num_train / data.steps_per_epoch * progress.steps_run / progress.train_seconds
            if progress.train_seconds else None),
        "wall_seconds": time.perf_counter() - started,
        **task.extra_metrics,
    }
    write_json(layout.metrics, metrics)
    log_finished_run(configured)  # MLflow: final metrics and artifacts, after the export
    return metrics


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Validate, train, evaluate and export one run into `run_dir`; return its metrics.

    The folder's `status.json` says `running` (with host, process id and a heartbeat renewed
    while it trains), then `completed`, `preempted` (with the step), `interrupted` (a worker of
    a multi-worker run was lost) or `failed` with the error.

    Args:
        cfg: the composed config (see `conf/train.yaml`).
        run_dir: this run's own folder.
    """
    if not is_chief():
        # Non-chief workers train in step with the chief but write only to a scratch folder.
        run_dir = Path(tempfile.mkdtemp(prefix="albert-worker-"))
        log.info("Non-chief worker: writing to scratch folder %s", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with Heartbeat(run_dir), lost_worker_ends_run(cfg.strategy, run_dir):
            validate(cfg)
            check_config(cfg)
            if not cfg.resume:  # a resume keeps the config its run started with
                write_run_config(cfg, RunLayout(run_dir))
            metrics = run_training(cfg, RunLayout(run_dir))
    except Preempted as stop:
        write_status(run_dir, "preempted", step=stop.step)
        raise
    except WorkerLost as lost:
        write_status(run_dir, "interrupted", error=str(lost))
        raise
    except BaseException as error:
        write_status(run_dir, "failed", error=f"{type(error).__name__}: {error}")
        raise
    write_status(run_dir, "completed")
    final = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics["final"].items()))
    speed = metrics["train_examples_per_second"]
    log.info("Completed in %.1fs at %s examples/s: %s", metrics["wall_seconds"],
             "?" if speed is None else f"{speed:.1f}", final)
    log.info("Run folder: %s", run_dir)
    return metrics


def train_job(cfg: DictConfig) -> dict:
    """One run as a Hydra job (of `albert-train` or `app.api.train`): a new run, or with
    `resume` that run's saved config, trained into the job's output folder; returns its metrics.

    Args:
        cfg: the composed config, inside a Hydra job (`HydraConfig` names the run folder).
    """
    run_cfg = resumed_config(cfg.resume) if cfg.resume else cfg
    return train(run_cfg, Path(HydraConfig.get().runtime.output_dir))


@command("train")
def main(cfg: DictConfig) -> float:
    """`albert-train [overrides]`: train one run (or a sweep with -m); returns the optimized
    metric to Hydra's sweepers."""
    return sweep_policy(lambda: train_job(cfg)["optimized_metric"]["value"])


if __name__ == "__main__":
    main()
