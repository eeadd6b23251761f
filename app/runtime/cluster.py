"""This process's place in a multi-worker cluster, read from `TF_CONFIG` (no TensorFlow import,
so the config resolvers can use it)."""

import json
import os


def _tf_config() -> dict:
    return json.loads(os.environ.get("TF_CONFIG", "{}"))


def cluster_workers() -> int:
    """The training processes `TF_CONFIG` names (chief and workers; 0 without a cluster)."""
    cluster = _tf_config().get("cluster", {})
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def is_chief() -> bool:
    """Whether this process writes the run folder: yes, unless TF_CONFIG makes it a non-chief
    worker (the chief, or worker 0 when the cluster has no chief, writes)."""
    config = _tf_config()
    task = config.get("task", {})
    if not task:
        return True
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0
