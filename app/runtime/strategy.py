"""Choose the tf.distribute strategy for the hardware at hand."""

import logging
import os
import socket

import tensorflow as tf

from app.errors import ConfigError
from app.runtime.cluster import cluster_workers
from app.runtime.multi_worker import multi_worker_strategy

log = logging.getLogger(__name__)

TPU_CONNECT_TIMEOUT_S = 10


def _split_cpu(num_devices: int) -> None:
    """Expose the CPU as `num_devices` logical devices (to test or run Mirrored on CPU)."""
    (cpu,) = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices
        )
    except RuntimeError as error:
        if len(tf.config.list_logical_devices("CPU")) != num_devices:
            raise ConfigError(
                f"`strategy.cpu_devices` must be set before TensorFlow starts; it already runs "
                f"with {len(tf.config.list_logical_devices('CPU'))} CPU device(s)"
            ) from error


def _probe(address: str) -> None:
    """Fail fast when a grpc://host:port TPU address does not answer (TF retries for minutes)."""
    host, _, port = address.removeprefix("grpc://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=TPU_CONNECT_TIMEOUT_S):
        pass


def _tpu_strategy(address: str | None) -> tf.distribute.Strategy:
    try:
        if address and address.startswith("grpc://"):
            _probe(address)
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (OSError, ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ConfigError(
            f"`strategy.name` is 'tpu' but no TPU is reachable at "
            f"`strategy.tpu_address`={address!r}: {error}"
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def _auto_name(gpus: list) -> str:
    if os.environ.get("TPU_NAME"):
        return "tpu"
    if cluster_workers() > 1:
        return "multi_worker"
    if len(gpus) > 1:
        return "mirrored"
    return "gpu" if gpus else "cpu"


def build_strategy(strategy_cfg) -> tf.distribute.Strategy:
    """Build the strategy named by `strategy.name` (cpu|gpu|mirrored|multi_worker|tpu|auto).

    `auto` picks a TPU when `TPU_NAME` is set, MultiWorkerMirroredStrategy when the
    environment names a cluster of several workers (TF_CONFIG, SLURM, submitit),
    MirroredStrategy on several GPUs, one GPU, else the CPU.
    Must run before anything creates variables.
    """
    if strategy_cfg.cpu_devices:
        _split_cpu(strategy_cfg.cpu_devices)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    name = _auto_name(gpus) if strategy_cfg.name == "auto" else strategy_cfg.name
    devices = list(strategy_cfg.devices) if strategy_cfg.devices else None
    if name == "gpu" and not gpus:
        raise ConfigError("`strategy.name` is 'gpu' but TensorFlow sees no GPU")
    if name == "tpu":
        strategy = _tpu_strategy(strategy_cfg.tpu_address)
    elif name == "multi_worker":
        strategy = multi_worker_strategy(strategy_cfg)
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if name == "gpu" else "/cpu:0")
    log.info("Strategy: %s -> %s, %d replica(s)", strategy_cfg.name, type(strategy).__name__,
             strategy.num_replicas_in_sync)
    return strategy


def check_global_batch(batch_size: int, strategy: tf.distribute.Strategy) -> None:
    """The global batch must split evenly across replicas."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(
            f"`trainer.batch_size` must be divisible by the number of replicas ({replicas}). "
            f"Received: {batch_size}"
        )
