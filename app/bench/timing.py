"""Timing primitives of the bench: windows of one `fit`, an input pipeline, a matmul peak."""

import math
import os
import statistics
import time
from pathlib import Path

import keras
import tensorflow as tf


def process_age() -> float:
    """Seconds since this process started (Linux /proc), else since this module was imported."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


class WindowTimer(keras.callbacks.Callback):
    """Wall time of each epoch (a timed window); with `first_step`, also the end of batch 1."""

    def __init__(self, first_step: bool = False):
        super().__init__()
        self.seconds: list[float] = []
        self.first_step_age: float | None = None
        if first_step:  # a batch hook makes fit synchronous: only for the warm-up
            self.on_train_batch_end = self._first_batch_end

    def _first_batch_end(self, batch, logs=None):
        if self.first_step_age is None:
            self.first_step_age = process_age()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def _window_steps(step_seconds: float, spe: int, options) -> int:
    steps = max(options.min_window_steps, math.ceil(options.window_seconds / step_seconds / spe))
    return steps * spe


def warm_up(model, dataset, spe: int, options, callbacks=(),
            first_step: bool = False) -> tuple[float, float | None]:
    """Compile and probe: (seconds per step, process age at the end of the first step)."""
    timer = WindowTimer(first_step)
    probe = options.min_window_steps * spe
    model.fit(dataset, epochs=2, steps_per_epoch=probe, callbacks=[*callbacks, timer],
              shuffle=False, verbose=0)
    return timer.seconds[1] / probe, timer.first_step_age


def time_windows(model, dataset, step_seconds: float, spe: int, options,
                 callbacks=()) -> dict:
    """Time `options.windows` windows of one `fit` call, after one untimed window.

    Every window is one Keras epoch of the same iterator (steps_per_epoch), so the input
    pipeline is never restarted between windows.
    """
    steps = _window_steps(step_seconds, spe, options)
    timer = WindowTimer()
    model.fit(dataset, epochs=options.windows + 1, steps_per_epoch=steps,
              callbacks=[*callbacks, timer], shuffle=False, verbose=0)
    windows = timer.seconds[1:]  # the first may still hold retraces / pipeline start
    return {"window_steps": steps, "window_seconds": windows,
            "step_seconds": statistics.median(windows) / steps}


def iterate(dataset: tf.data.Dataset, steps: int) -> tuple[float, int]:
    """Seconds to pull `steps` batches, and the examples in them."""
    started, examples = time.perf_counter(), 0
    for batch in dataset.take(steps):
        examples += int(tf.shape(tf.nest.flatten(batch)[0])[0])
    return time.perf_counter() - started, examples


def matmul_peak(n: int, dtype=tf.float32, device: str = "/cpu:0", seconds: float = 2.0) -> float:
    """Best FLOP/s of an n x n x n matmul chain on `device` (10 matmuls per call)."""
    with tf.device(device):
        a = tf.random.normal((n, n), dtype=tf.float32, seed=1)
        a = tf.cast(a / math.sqrt(n), dtype)

        @tf.function
        def chain(x):
            for _ in range(10):
                x = tf.matmul(x, a)
            return x

        chain(a).numpy()
        best, deadline = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            chain(a).numpy()
            best = max(best, 10 * 2 * n**3 / (time.perf_counter() - started))
    return best
