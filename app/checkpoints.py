"""Checkpoints that appear whole: Keras' ModelCheckpoint, writing through a temporary file.

Keras writes `.weights.h5` / `.keras` files in place, so a reader (TensorBoard, a resume, a copy
job) can see half a file, and a crash or a full disk mid-write destroys the previous checkpoint.
"""

import os

import keras


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
