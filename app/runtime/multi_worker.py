"""What multi-worker training needs beyond `tf.distribute.MultiWorkerMirroredStrategy`.

- The strategy for the cluster the environment names (app.runtime.cluster), with TensorFlow's
  coordination service watching the workers: one silent for `strategy.timeout_seconds` (dead or
  frozen) aborts the others' collectives, and they wait `strategy.start_timeout_seconds` for
  each other at the start. `CommunicationOptions(timeout_seconds=...)` is not used: it bounds
  every collective, waiting for a slower peer included (the chief writing a checkpoint, a first
  step still tracing), so a busy worker would end the run.
- At the start every worker compares its config with the chief's, through the coordination
  service's key-value store, and learns the chief's run folder.
- A lost worker ends each of the others with one WorkerLost line that names it and the resume.
- Two workarounds let Keras' `fit` train under the strategy (below).

Written for keras 3.15.1 (multi-worker on Keras 3 is open upstream: keras-team/keras#20585).
Two spots fail with keras-hub models on 2+ workers:
1. `_maybe_symbolic_build` reduces the first distributed batch with a MEAN across workers
   ("Attempt to convert a value ({'token_ids': PerReplica..."); building from one replica's
   batch gives the same shapes without a collective.
2. `reduce_per_replica` reduces every logged value with `axis=0`, which fails on the scalar
   metric values ("Invalid reduction dimension 0 for input with 0 dimensions"); scalars are
   reduced with `axis=None`.
"""

import contextlib
import errno
import json
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer
from omegaconf import DictConfig, OmegaConf
from tensorflow.compiler.xla.tsl.protobuf.coordination_config_pb2 import CoordinatedJob
from tensorflow.python.distribute import multi_worker_util
from tensorflow.python.eager import context

from app.errors import ConfigError, WorkerLost
from app.runtime.cluster import Cluster, no_cluster_hint, resolve_cluster

log = logging.getLogger(__name__)

WRITTEN_FOR_KERAS = "3.15.1"
_original_reduce_per_replica = tf_trainer.reduce_per_replica


def _build_from_one_replica(self, iterator=None, data_batch=None):
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tree.map_structure(
                lambda x: self.distribute_strategy.experimental_local_results(x)[0]
                if isinstance(x, tf.distribute.DistributedValues) else x,
                batch,
            )
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _reduce_per_replica(values, strategy, reduction):
    if reduction not in ("auto", "mean") or not tf_trainer._collective_all_reduce_multi_worker(
        strategy
    ):
        return _original_reduce_per_replica(values, strategy, reduction)

    def reduce(value):
        first = value.values[0] if isinstance(value, tf.distribute.DistributedValues) else value
        return strategy.reduce("MEAN", value, axis=None if first.shape.rank == 0 else 0)

    return tree.map_structure(reduce, values)


def patch_keras_for_multi_worker() -> None:
    """Apply both workarounds (idempotent); warns when Keras is not the version they target."""
    if keras.__version__ != WRITTEN_FOR_KERAS:
        log.warning("Multi-worker workarounds were written for keras %s, running %s",
                    WRITTEN_FOR_KERAS, keras.__version__)
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _build_from_one_replica
    tf_trainer.reduce_per_replica = _reduce_per_replica


# === The strategy for the resolved cluster ===

def _check_port_free(cluster: Cluster) -> None:
    """ConfigError when this task's port is taken (TensorFlow would fail with "Could not start
    gRPC server" and leave the other workers waiting)."""
    port = int(cluster.address.rpartition(":")[2])
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        try:
            probe.bind(("", port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            fix = ("change its port in TF_CONFIG" if cluster.source == "TF_CONFIG" else
                   "set `strategy.port` to a free one (task k on a host listens on port + k)")
            raise ConfigError(f"worker {cluster.index} cannot listen on {cluster.address}: port "
                              f"{port} is in use on this host; free it or {fix}") from None


def _named_tasks(message: str, cluster: Cluster) -> list[int]:
    """The workers (indices in `cluster.workers`) a TensorFlow error message names."""
    chiefs = len(cluster.jobs.get("chief", []))
    return [int(task) + (chiefs if job == "worker" else 0)
            for job, task in re.findall(r"/job:(chief|worker)/(?:replica:\d+/)?task:(\d+)",
                                        message)]


def multi_worker_strategy(strategy_cfg: DictConfig) -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy over the cluster the environment names (see
    app.runtime.cluster), its workers watched by the coordination service."""
    cluster = resolve_cluster(strategy_cfg.port)
    if cluster is None:
        raise ConfigError(f"`strategy.name` is 'multi_worker' but the environment names no "
                          f"cluster: {no_cluster_hint()}")
    log.info("Cluster from %s: %d worker(s) %s; this is worker %d (%s), the chief is %s",
             cluster.source, len(cluster.workers), ", ".join(cluster.workers), cluster.index,
             cluster.address, cluster.workers[0])
    _check_port_free(cluster)
    spec = tf.train.ClusterSpec(cluster.jobs)
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        heartbeat_timeout_in_ms=strategy_cfg.timeout_seconds * 1000,
        cluster_register_timeout_in_ms=strategy_cfg.start_timeout_seconds * 1000,
        shutdown_barrier_timeout_in_ms=strategy_cfg.timeout_seconds * 1000,
        coordinated_jobs=[CoordinatedJob(name=job, num_tasks=len(addresses))
                          for job, addresses in cluster.jobs.items()])
    # Without the barrier a worker whose peers never start waits at registration forever.
    context.context().coordination_service.cluster_register_with_barrier = True
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, task_type=cluster.task_type, task_id=cluster.task_id, rpc_layer="grpc")
    patch_keras_for_multi_worker()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except tf.errors.DeadlineExceededError as error:
        missing = sorted(set(_named_tasks(error.message.partition("timed out task names:")[2],
                                          cluster)) - {cluster.index})
        who = (", ".join(f"worker {i} ({cluster.workers[i]})" for i in missing) if missing
               else f"the chief ({cluster.workers[0]})")
        raise ConfigError(f"{who} did not start within `strategy.start_timeout_seconds`="
                          f"{strategy_cfg.start_timeout_seconds}s; start every worker of the "
                          f"cluster ({cluster.source}) with the same command") from error


# === The workers agree at the start ===

CONFIG_KEY = "albert/config/{}"
RUN_FOLDER_KEY = "albert/run_folder"
# In a non-chief worker's scratch folder: the chief's run folder (what a resume names).
CHIEF_FOLDER_FILE = "chief_run_folder.txt"


def _flat(node, prefix: str = "") -> dict:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (lists by index)."""
    if not isinstance(node, dict | list) or not node:
        return {prefix: node}
    items = node.items() if isinstance(node, dict) else enumerate(node)
    return {key: value for name, child in items
            for key, value in _flat(child, f"{prefix}.{name}" if prefix else str(name)).items()}


def meet_workers(cfg: DictConfig, strategy: tf.distribute.Strategy, run_dir: Path) -> None:
    """Under MultiWorkerMirroredStrategy: ConfigError unless every worker composed the same
    config (naming the keys that differ), and the chief's run folder noted in the others'.

    Args:
        cfg: this worker's run config.
        strategy: the run's strategy (nothing happens unless it is multi-worker).
        run_dir: this worker's folder (the chief's is the run folder).
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    cluster = resolve_cluster(cfg.strategy.port)
    store, timeout_ms = context.context(), cfg.strategy.start_timeout_seconds * 1000
    store.set_config_key_value(CONFIG_KEY.format(cluster.index),
                               json.dumps(_flat(OmegaConf.to_container(cfg, resolve=True))))
    if cluster.index == 0:
        store.set_config_key_value(RUN_FOLDER_KEY, str(run_dir.resolve()))
    configs = [json.loads(store.get_config_key_value(CONFIG_KEY.format(i), timeout_ms))
               for i in range(len(cluster.workers))]
    for index, other in enumerate(configs[1:], start=1):
        keys = sorted(k for k in configs[0].keys() | other.keys()
                      if configs[0].get(k) != other.get(k))
        if keys:
            shown = ", ".join(f"{k}={other.get(k)!r} (the chief: {configs[0].get(k)!r})"
                              for k in keys[:3])
            raise ConfigError(f"the workers run different configs: worker {index} "
                              f"({cluster.workers[index]}) has {shown}"
                              f"{f' and {len(keys) - 3} more' if len(keys) > 3 else ''}; start "
                              f"every worker with the same command and overrides")
    if cluster.index:
        (run_dir / CHIEF_FOLDER_FILE).write_text(
            store.get_config_key_value(RUN_FOLDER_KEY, timeout_ms))


# === A lost worker ends the run ===

LOST = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
        tf.errors.CancelledError)
REASONS = (("stopped sending heartbeats", "no heartbeat for `strategy.timeout_seconds`={}s"),
           ("CoordinationService/Heartbeat", "no answer for `strategy.timeout_seconds`={}s"),
           ("Connection reset", "its connection was reset"),
           ("Connection refused", "its connection was refused"),
           ("Socket closed", "its connection closed"))


@contextlib.contextmanager
def lost_worker_ends_run(strategy_cfg: DictConfig, run_dir: Path) -> Iterator[None]:
    """Turn the error a lost worker (dead or frozen) raises in the others into one WorkerLost
    naming it and the command that resumes the run (outside a cluster: nothing changes).

    Args:
        strategy_cfg: the run's `strategy` config.
        run_dir: this worker's folder (the chief's is the run folder).
    """
    try:
        yield
    except LOST as error:
        try:
            cluster = resolve_cluster(strategy_cfg.port)
        except ConfigError:
            cluster = None
        if cluster is None or len(cluster.workers) < 2:
            raise
        named = [i for i in _named_tasks(error.message, cluster) if i != cluster.index]
        if not named and cluster.index and "CoordinationService" in error.message:
            named = [0]  # the coordination service runs in the chief
        who = (f"worker {named[0]} ({cluster.workers[named[0]]})" if named
               else "another worker")
        reason = next((words.format(strategy_cfg.timeout_seconds) for pattern, words in REASONS
                       if pattern in error.message), type(error).__name__)
        noted = run_dir / CHIEF_FOLDER_FILE
        folder = (run_dir if cluster.index == 0 else
                  noted.read_text() if noted.is_file() else "<the chief's run folder>")
        raise WorkerLost(f"{who} of the {len(cluster.workers)} stopped answering ({reason}); "
                         f"worker {cluster.index} stopped too. Resume the run by starting every "
                         f"worker again with `albert-train resume={folder}`") from error
