"""`model.fit` that survives: saves and stops on SIGTERM/SIGINT, rolls back a diverged loss."""

import logging
import signal
from collections.abc import Callable

import keras
from omegaconf import DictConfig

from app.errors import AppError, Preempted
from app.training.checkpoints import CallbackMemory, Diverged, StepCheckpoint
from app.training.optim import set_learning_rate_factor
from app.training.resume import all_states, restore_state

log = logging.getLogger(__name__)

class TrainingDiverged(AppError):
    """The training loss became NaN or infinite."""


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


def fit_with_recovery(
    model: keras.Model,
    batches: Callable[[int], object],
    first_step: int,
    steps_per_epoch: int,
    epochs: int,
    callbacks: list,
    checkpoint: StepCheckpoint,
    memory: CallbackMemory,
    trainer: DictConfig,
) -> None:
    """`model.fit` from global batch `first_step` to the end of `epochs` (history: EpochLog),
    saving and stopping on SIGTERM/SIGINT (raises Preempted).

    On a NaN or infinite loss (or weights) nothing of that step is saved; with
    `trainer.on_nonfinite_loss=fail` the run stops (TrainingDiverged), with `rollback` it
    restores the last good state (with what the callbacks remembered then) and continues with
    the learning rate times `trainer.rollback_lr_factor` (kept in later states), at most
    `trainer.max_rollbacks` times.
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
            try:
                fit_from(step)
            except Diverged as diverged:
                last_good = all_states(checkpoint.state_dir)[-1]
                if trainer.on_nonfinite_loss != "rollback" or rollbacks == trainer.max_rollbacks:
                    raise TrainingDiverged(
                        f"the training loss became nan or inf at step {diverged.step} "
                        f"({diverged}); the last good state is '{last_good}'. Lower "
                        f"`optimizer.learning_rate`, or set `trainer.on_nonfinite_loss=rollback`"
                    ) from diverged
                rollbacks += 1
                meta = restore_state(last_good, model)
                memory.taken = meta.get("callbacks", {})
                factor = meta.get("learning_rate_factor", 1.0) * trainer.rollback_lr_factor
                set_learning_rate_factor(model, factor)
                step = meta["step"]
                log.warning("%s: rolled back to step %d, learning rate x%g of the configured "
                            "one (rollback %d of %d)", diverged, step, factor, rollbacks,
                            trainer.max_rollbacks)
                checkpoint.reset(step)
                model.stop_training = False
                continue
            if checkpoint.preempted:
                raise Preempted(checkpoint.step)
            return
