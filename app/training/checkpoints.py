"""Checkpoint callbacks: whole training states (by steps, time and epoch), atomic weight files,
and the memory of Keras' stateful callbacks across resumes.

Keras writes `.weights.h5` / `.keras` files in place, so a reader (TensorBoard, a resume, a copy
job) can see half a file, and a crash or a full disk mid-write destroys the previous checkpoint.
"""

import math
import os
import time
from pathlib import Path

import keras

from app.training.collapse import CollapseCheckedEvaluation
from app.training.resume import all_states, nonfinite_weights, save_state


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """`keras.callbacks.ModelCheckpoint` (same arguments) that saves to a temporary file in the
    same folder, then renames it over the checkpoint (an atomic replace on POSIX).

    Example:
        >>> AtomicModelCheckpoint("checkpoints/last.weights.h5", save_weights_only=True)
    """

    _final_path: str | None = None

    def _temporary_path(self) -> str:
        folder, name = os.path.split(self._final_path)
        # The temporary name keeps the suffix (`.weights.h5`, `.keras`) that Keras checks.
        return os.path.join(folder, f".tmp-{os.getpid()}-{name}")

    def _get_file_path(self, epoch, batch, logs):
        self._final_path = super()._get_file_path(epoch, batch, logs)
        return self._temporary_path()

    def _save_model(self, epoch, batch, logs):
        self._final_path = None
        try:
            super()._save_model(epoch, batch, logs)
        except BaseException:
            if self._final_path and os.path.exists(self._temporary_path()):
                os.remove(self._temporary_path())
            raise
        if self._final_path and os.path.exists(self._temporary_path()):
            os.replace(self._temporary_path(), self._final_path)


class Diverged(Exception):
    """A non-finite loss or weights at global batch `step` (raised inside `fit`, so that no
    epoch-end callback records the diverged model)."""

    def __init__(self, step: int, what: str):
        super().__init__(f"{what} not finite at step {step}")
        self.step = step


class StepCheckpoint(keras.callbacks.Callback):
    """Saves the training state: every `every_n_steps` batches or `every_minutes`, at each
    epoch end (after the epoch's evaluation and checkpoints: it comes last), and when asked
    to stop.

    A SIGTERM or SIGINT (see `stop_on_signals`) makes it save at the next batch end and stop
    training; `preempted` then tells the caller to exit with PREEMPTED_EXIT_CODE. A non-finite
    loss, or weights found non-finite before a save, raise Diverged: no such state is saved.

    Args:
        state_dir: the run's `checkpoints/state`.
        every_n_steps: batches between saves (None: by time and epoch only).
        every_minutes: minutes between saves (None: by steps and epoch only).
        keep: newest states kept.
        first_step: the global batch this process starts at.
        steps_per_epoch: batches per epoch.
        meta: returns the JSON the state carries besides the variables (see save_state).
    """

    def __init__(self, state_dir: Path, every_n_steps: int | None, every_minutes: float | None,
                 keep: int, first_step: int, steps_per_epoch: int, meta=dict):
        super().__init__()
        self.state_dir = state_dir
        self.every_n_steps = every_n_steps
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self.keep = keep
        self.steps_per_epoch = steps_per_epoch
        self.meta = meta
        self.stop_requested = False
        self.preempted = False
        self.save_seconds: list[float] = []
        self.reset(first_step)

    def reset(self, step: int) -> None:
        """Continue counting from a restored state."""
        self.step = self.saved_step = step
        self.saved_at = time.monotonic()

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
            raise Diverged(self.step, "the training loss")
        if self.step % self.steps_per_epoch == 0:
            return  # the epoch's end: saved after its evaluation, in on_epoch_end
        by_steps = self.every_n_steps and self.step - self.saved_step >= self.every_n_steps
        by_time = self.every_seconds and time.monotonic() - self.saved_at >= self.every_seconds
        if by_steps or by_time or self.stop_requested:
            self._save()
        if self.stop_requested:
            self.preempted = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.step % self.steps_per_epoch == 0:  # not a bench's timing window
            self._save()
        if self.stop_requested:
            self.preempted = True
            self.model.stop_training = True

    def _save(self):
        started = time.perf_counter()
        if nonfinite_weights(self.model):
            raise Diverged(self.step, f"the weights {nonfinite_weights(self.model)[:3]}")
        save_state(self.state_dir, self.model, self.step, self.keep, self.meta())
        self.saved_step, self.saved_at = self.step, time.monotonic()
        self.save_seconds.append(time.perf_counter() - started)


# What stateful callbacks remember between epochs (Keras' reset it in on_train_begin).
REMEMBERED = (
    (keras.callbacks.EarlyStopping, ("wait", "best", "best_epoch", "stopped_epoch")),
    (keras.callbacks.ModelCheckpoint, ("best",)),
    (CollapseCheckedEvaluation, ("collapsed",)),
)


class CallbackMemory(keras.callbacks.Callback):
    """Keeps what ModelCheckpoint and EarlyStopping remember (best value, patience), and
    CollapseCheckedEvaluation's collapse record, across `fit` calls, resumes and rollbacks:
    taken at each epoch end, put back at each train begin.

    Place it after those callbacks (their on_train_begin resets, their on_epoch_end updates).

    Args:
        callbacks: the run's callbacks.
        saved: memory from a saved state (see `taken`).
    """

    def __init__(self, callbacks: list, saved: dict | None = None):
        super().__init__()
        self.callbacks = callbacks
        self.taken = saved or {}

    def _remembering(self):
        for index, callback in enumerate(self.callbacks):
            for cls, names in REMEMBERED:
                if isinstance(callback, cls):
                    yield f"{index}:{type(callback).__name__}", callback, names
                    break

    def on_train_begin(self, logs=None):
        for key, callback, _ in self._remembering():
            for name, value in self.taken.get(key, {}).items():
                setattr(callback, name, value)

    def on_epoch_end(self, epoch, logs=None):
        self.taken = {key: {name: _plain(getattr(callback, name)) for name in names}
                      for key, callback, names in self._remembering()}


def _plain(value):
    """A JSON value for a callback's remembered number (a numpy scalar becomes Python's)."""
    return value.item() if hasattr(value, "item") else value
