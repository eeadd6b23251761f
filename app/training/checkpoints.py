"""Checkpoint callbacks: whole training states every N steps, and atomic weight files.

Keras writes `.weights.h5` / `.keras` files in place, so a reader (TensorBoard, a resume, a copy
job) can see half a file, and a crash or a full disk mid-write destroys the previous checkpoint.
"""

import math
import os
from pathlib import Path

import keras

from app.training.resume import all_states, save_state


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
