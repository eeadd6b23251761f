"""Timing primitives of the bench: windows of one `fit`, interleaving, a pipeline, a matmul peak."""

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


class StartupPhases:
    """Seconds of the consecutive phases from process start to the first training step.

    The first phase, `imports_and_config`, runs from the process start to this object's
    creation (Python, TensorFlow, Keras and keras-hub imports, Hydra's composition); each
    `done(name)` closes the phase since the previous one.
    """

    def __init__(self):
        self.seconds = {"imports_and_config": process_age()}
        self._last = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._last
        self._last = now

    def until_first_step(self, first_step_age: float) -> dict:
        """The phases, the first step itself (tracing, compiling and running it: what is left
        of `first_step_age`, the process age at its end) and their total."""
        first_step = first_step_age - sum(self.seconds.values())
        return {**self.seconds, "first_step": first_step, "total": first_step_age}


class WindowTimer(keras.callbacks.Callback):
    """Wall time of each epoch (a timed window); with `first_step`, also the end of batch 1.

    Args:
        first_step: record the process age at the end of the first batch (start-up).
        from_first_batch: start each window at its first batch, not at the epoch's begin:
            leaves out the iterator a new `fit` creates there (under a distribution strategy,
            up to a second of Python per `fit` on a busy 2-core CPU, seen with py-spy), for a
            loop timed in one `fit` per window.
    """

    def __init__(self, first_step: bool = False, from_first_batch: bool = False):
        super().__init__()
        self.seconds: list[float] = []
        self.first_step_age: float | None = None
        if from_first_batch:
            self.on_train_batch_begin = self._first_batch_begin
        if first_step:
            self.on_train_batch_end = self._first_batch_end

    def _first_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.started = time.perf_counter()

    def _first_batch_end(self, batch, logs=None):
        if self.first_step_age is None:
            self.first_step_age = process_age()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def window_steps(step_seconds: float, spe: int, options) -> int:
    """Batches in one timed window: about `options.window_seconds` long, whole executions."""
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


class BetweenWindows(keras.callbacks.Callback):
    """Calls `between(epoch)` at each epoch end of the app's `fit`: the other loops' windows run
    there, right after each app window, so all of them share the same load (A B A B ...).

    Put it last: the app's own epoch-end work and its window timer come first.
    """

    def __init__(self, between):
        super().__init__()
        self.between = between

    def on_epoch_end(self, epoch, logs=None):
        self.between(epoch)


def spread(values: list[float]) -> dict:
    """min, median and max of one measure over the timed windows."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


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
