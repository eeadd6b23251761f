"""Step-exact checkpoints and resume: model, optimizer, dropout RNG and data position.

Keras' BackupAndRestore resumes at epoch boundaries only, and `model.weights` leaves out the
dropout seed generators, so a state here is every variable of the model (`model.variables`
includes the seed-generator states) and of the optimizer (moments and iteration count, which
drives the learning-rate schedule), plus the global batch index. The data position follows
from that index: each epoch's order comes from the seed and the epoch alone (see
app.data.pipeline.train_batches), so a resumed run skips exactly the batches already seen.

States are `.npz` arrays (no pickle) in `checkpoints/state/step-<N>/`, written to a temporary
folder and renamed, so a crash mid-write never leaves a corrupt latest state.
"""

import json
import logging
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from app.config import TrainConfig
from app.errors import AppError, ConfigError
from app.run_dir import write_json

log = logging.getLogger(__name__)

STATE_DIR = Path("checkpoints") / "state"
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGINT after saving; resume it.


class TrainingDiverged(AppError):
    """The training loss became NaN or infinite."""


class Preempted(Exception):
    """Training stopped on a signal after saving the state of global batch `step`."""

    def __init__(self, step: int):
        super().__init__(f"stopped by a signal after step {step}")
        self.step = step


def _state_variables(model: keras.Model) -> dict[str, list]:
    return {"model": model.variables, "optimizer": model.optimizer.variables}


def save_state(state_dir: Path, model: keras.Model, step: int, keep: int) -> Path:
    """Write the state after global batch `step` atomically; keep the newest `keep` states."""
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / f"step-{step:09d}"
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=state_dir))
    arrays = {f"{group}/{i}": keras.ops.convert_to_numpy(v.value)
              for group, variables in _state_variables(model).items()
              for i, v in enumerate(variables)}
    np.savez(scratch / "variables.npz", **arrays)
    (scratch / "meta.json").write_text(json.dumps({"step": step}))
    if target.exists():
        shutil.rmtree(target)
    os.replace(scratch, target)
    for old in all_states(state_dir)[:-keep]:
        shutil.rmtree(old)
    return target


def all_states(state_dir: Path) -> list[Path]:
    """Complete states, oldest first."""
    if not state_dir.is_dir():
        return []
    return sorted(p for p in state_dir.glob("step-*") if (p / "meta.json").is_file())


def restore_state(path: Path, model: keras.Model) -> int:
    """Load a state into a compiled model (its optimizer is built here); return its step."""
    model.optimizer.build(model.trainable_variables)
    with np.load(path / "variables.npz", allow_pickle=False) as arrays:
        for group, variables in _state_variables(model).items():
            for i, variable in enumerate(variables):
                variable.assign(arrays[f"{group}/{i}"])
    return json.loads((path / "meta.json").read_text())["step"]


def resumed_config(run_dir: str) -> DictConfig:
    """The saved config of the run to resume (schema defaults fill keys added since), set to
    reuse that run's tokenizer. Refused before anything is written when the run is complete
    or has no saved state."""
    folder = Path(run_dir)
    saved = folder / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"`resume` must name a run folder with a saved config. "
                          f"Received: '{run_dir}' (no {saved.name} in .hydra/)")
    status = folder / "status.json"
    if status.is_file() and json.loads(status.read_text()).get("status") == "completed":
        raise ConfigError(f"`resume` names a run that already completed: '{run_dir}'")
    if not all_states(folder / STATE_DIR):
        raise ConfigError(f"`resume` names a run with no saved training state: '{run_dir}' has "
                          f"no '{STATE_DIR}/step-*' folder (runs save one at their start)")
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(saved))
    cfg.resume = str(run_dir)
    cfg.tokenizer.proto = str(folder / "tokenizer" / "spm.model")
    return cfg


def restore_latest(run_dir: Path, model: keras.Model) -> int:
    """Restore the newest state of a run; return the global batch index to continue from."""
    states = all_states(run_dir / STATE_DIR)
    step = restore_state(states[-1], model)
    log.info("Resumed from %s (step %d)", states[-1], step)
    return step


class EpochLog(keras.callbacks.Callback):
    """Per-epoch logs kept in the run folder (`history.json`), so a resumed run's history
    holds the epochs of every process that worked on it."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def _epochs(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def on_epoch_end(self, epoch, logs=None):
        epochs = self._epochs()
        epochs[str(epoch)] = {name: float(value) for name, value in (logs or {}).items()}
        write_json(self.path, epochs)

    def history(self) -> dict[str, list[float]]:
        """Metric name -> one value per epoch, in epoch order."""
        epochs = self._epochs()
        merged: dict[str, list[float]] = {}
        for epoch in sorted(epochs, key=int):
            for name, value in epochs[epoch].items():
                merged.setdefault(name, []).append(value)
        return merged


class StepCheckpoint(keras.callbacks.Callback):
    """Saves the state every `every_n_steps` batches, at the end, and when asked to stop.

    A SIGTERM or SIGINT (see `stop_on_signals`) makes it save at the next batch end and stop
    training; `preempted` then tells the caller to exit with PREEMPTED_EXIT_CODE.
    """

    def __init__(self, state_dir: Path, every_n_steps: int | None, keep: int, first_step: int):
        super().__init__()
        self.state_dir = state_dir
        self.every_n_steps = every_n_steps
        self.keep = keep
        self.step = first_step
        self.saved_step = first_step
        self.stop_requested = False
        self.preempted = False
        self.diverged_at: int | None = None

    def reset(self, step: int) -> None:
        """Continue counting from a restored state."""
        self.step = self.saved_step = step
        self.diverged_at = None

    def on_train_begin(self, logs=None):
        # A state at the very start, so there is always a last good state to roll back to.
        if not all_states(self.state_dir):
            self._save()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = self.step

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the last batch index of this call (several with steps_per_execution).
        self.step = self.epoch_start + batch + 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.diverged_at = self.step
            self.model.stop_training = True
            return
        due = self.every_n_steps and self.step - self.saved_step >= self.every_n_steps
        if due or self.stop_requested:
            self._save()
        if self.stop_requested:
            self.preempted = True
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.step != self.saved_step and self.diverged_at is None:
            self._save()

    def _save(self):
        save_state(self.state_dir, self.model, self.step, self.keep)
        self.saved_step = self.step


class stop_on_signals:  # noqa: N801 (used as a context manager, like contextlib helpers)
    """While active, SIGTERM and SIGINT ask `checkpoint` to save and stop instead of killing."""

    def __init__(self, checkpoint: StepCheckpoint):
        self.checkpoint = checkpoint
        self.previous = {}

    def _handle(self, signum, frame):
        log.warning("Received %s: saving a checkpoint and stopping", signal.Signals(signum).name)
        self.checkpoint.stop_requested = True

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _scale_learning_rate(model: keras.Model, factor: float) -> None:
    """Scale the peak of the run's WarmupLinearDecay schedule and retrace the train step."""
    schedule = model.optimizer._learning_rate  # the schedule object (Keras keeps no public handle)
    schedule.peak *= factor
    model.make_train_function(force=True)


def fit_with_recovery(
    model: keras.Model,
    batches: Callable[[int], object],
    first_step: int,
    steps_per_epoch: int,
    epochs: int,
    callbacks: list,
    checkpoint: StepCheckpoint,
    trainer: DictConfig,
) -> None:
    """`model.fit` from global batch `first_step` to the end of `epochs` (history: EpochLog),
    saving and stopping on SIGTERM/SIGINT (raises Preempted).

    On a NaN or infinite loss the state of that step is not saved; with
    `trainer.on_nonfinite_loss=fail` the run stops (TrainingDiverged), with `rollback` it
    restores the last good state and continues with the learning rate times
    `trainer.rollback_lr_factor`, at most `trainer.max_rollbacks` times.
    """

    def fit_from(step: int) -> None:
        # A resume inside an epoch runs that epoch's remaining batches as one short `fit`,
        # then the remaining epochs; `batches(step)` starts at global batch `step`.
        epoch, offset = divmod(step, steps_per_epoch)
        while epoch < epochs and not model.stop_training:
            last_epoch = epoch + 1 if offset else epochs
            model.fit(batches(epoch * steps_per_epoch + offset), initial_epoch=epoch,
                      epochs=last_epoch, steps_per_epoch=steps_per_epoch - offset,
                      callbacks=callbacks, shuffle=False, verbose=0)
            epoch, offset = last_epoch, 0

    rollbacks = 0
    step = first_step
    with stop_on_signals(checkpoint):
        while True:
            fit_from(step)
            if checkpoint.preempted:
                raise Preempted(checkpoint.step)
            if checkpoint.diverged_at is None:
                return
            last_good = all_states(checkpoint.state_dir)[-1]
            if trainer.on_nonfinite_loss != "rollback" or rollbacks == trainer.max_rollbacks:
                raise TrainingDiverged(
                    f"the training loss became nan or inf at step {checkpoint.diverged_at}; the "
                    f"last good state is '{last_good}'. Lower `optimizer.learning_rate`, or set "
                    f"`trainer.on_nonfinite_loss=rollback`"
                )
            rollbacks += 1
            step = restore_state(last_good, model)
            _scale_learning_rate(model, trainer.rollback_lr_factor)
            log.warning("Loss not finite at step %d: rolled back to step %d, learning rate x%g "
                        "(rollback %d of %d)", checkpoint.diverged_at, step,
                        trainer.rollback_lr_factor, rollbacks, trainer.max_rollbacks)
            checkpoint.reset(step)
            model.stop_training = False
