"""Choose the tf.distribute strategy for the hardware at hand."""

import logging

import tensorflow as tf

from app.errors import ConfigError

log = logging.getLogger(__name__)


def build_strategy(strategy_cfg) -> tf.distribute.Strategy:
    """Build the strategy named by `strategy.name`.

    `auto` picks MirroredStrategy on several GPUs, one GPU if there is one, else the CPU.
    Must run before anything creates variables.
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    name = strategy_cfg.name
    if name == "gpu" and not gpus:
        raise ConfigError("`strategy.name` is 'gpu' but TensorFlow sees no GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "gpu" if gpus else "cpu"
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif name == "gpu":
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0")
    else:
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    log.info("Strategy: %s (%s), %d replica(s)", strategy_cfg.name, type(strategy).__name__,
             strategy.num_replicas_in_sync)
    return strategy
