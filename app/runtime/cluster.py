"""This process's place in a multi-worker cluster, read from the scheduler's environment (no
TensorFlow import, so the config resolvers can use it).

The first of these that is present describes the cluster:
- `TF_CONFIG` (a Kubernetes TFJob sets it in every pod, or write it by hand): its `chief` and
  `worker` tasks train, the chief (else worker 0) first.
- a SLURM job step (`srun`, or `hydra/launcher=submitit_slurm`): one task per process,
  `SLURM_PROCID` is its index; the hosts come from `SLURM_STEP_NODELIST` and
  `SLURM_STEP_TASKS_PER_NODE`, and the task with local id k on a host listens on `port` + k.
- submitit's local executor (`hydra/launcher=submitit_local`): `SUBMITIT_LOCAL_NTASKS` tasks on
  this host, `SUBMITIT_LOCAL_GLOBALID` this one's index, listening on `port` + index.

Task 0 of that order is the chief: it alone writes the run folder.
TensorFlow's SlurmClusterResolver fell short: it asks nvidia-smi for GPUs (and fails on a CPU
node without it), sets CUDA_VISIBLE_DEVICES itself, and needs TensorFlow imported.
"""

import json
import os
import re
from dataclasses import dataclass

from app.errors import ConfigError

DEFAULT_PORT = 12345  # conf/strategy/multi_worker.yaml's `port`
TRAINING_JOBS = ("chief", "worker")  # TF_CONFIG's task types that train, in rank order


@dataclass(frozen=True)
class Cluster:
    """The training tasks of one multi-worker run and which of them this process is.

    Args:
        source: where it was read: `TF_CONFIG`, `SLURM` or `submitit`.
        jobs: `{"chief": [...], "worker": ["host:port", ...]}` as tf.train.ClusterSpec takes it.
        task_type: this task's job (`chief` or `worker`).
        task_id: this task's index in its job.
    """

    source: str
    jobs: dict
    task_type: str
    task_id: int

    @property
    def workers(self) -> list[str]:
        """Every training task's address, the chief first."""
        return [address for job in TRAINING_JOBS for address in self.jobs.get(job, [])]

    @property
    def index(self) -> int:
        """This task's place in `workers` (0: the chief)."""
        before = len(self.jobs.get("chief", [])) if self.task_type == "worker" else 0
        return before + self.task_id

    @property
    def address(self) -> str:
        return self.workers[self.index]

    def describe(self) -> dict:
        """What env.json records and the log names."""
        return {"source": self.source, "workers": self.workers, "index": self.index,
                "address": self.address, "chief": self.workers[0]}


def _tf_config() -> Cluster | None:
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    jobs = {job: list(config.get("cluster", {}).get(job, [])) for job in TRAINING_JOBS}
    jobs = {job: addresses for job, addresses in jobs.items() if addresses}
    if not jobs:
        return None
    task = config.get("task", {})
    task_type, task_id = task.get("type"), int(task.get("index", 0))
    if task_type not in jobs or not 0 <= task_id < len(jobs[task_type]):
        raise ConfigError(f"`TF_CONFIG` names task {task_type!r} {task_id}, which its cluster "
                          f"does not train with. Received: {os.environ['TF_CONFIG']}; expected "
                          f"a `task` among its {' and '.join(jobs)} tasks")
    return Cluster("TF_CONFIG", jobs, task_type, task_id)


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compact host list, in order: `n[1-2,05],m` -> `['n1', 'n2', 'n05', 'm']`."""
    hosts = []
    for prefix, ranges, _ in re.findall(r"([^,\[]+)(?:\[([^\]]+)\])?(,|$)", hostlist):
        if not ranges:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            hosts += [f"{prefix}{i:0{len(first)}d}" for i in range(int(first),
                                                                   int(last or first) + 1)]
    return hosts


def expand_tasks_per_node(tasks: str) -> list[int]:
    """SLURM's tasks per node: `2(x3),1` -> `[2, 2, 2, 1]`."""
    counts = []
    for count, repeat in re.findall(r"(\d+)(?:\(x(\d+)\))?", tasks):
        counts += [int(count)] * int(repeat or 1)
    return counts


def _slurm(port: int) -> Cluster | None:
    env = os.environ
    if "SLURM_STEP_NUM_TASKS" not in env or "SLURM_PROCID" not in env:
        return None
    tasks, rank = int(env["SLURM_STEP_NUM_TASKS"]), int(env["SLURM_PROCID"])
    requested = int(env.get("SLURM_NTASKS", tasks))
    if tasks != requested:
        raise ConfigError(f"this SLURM job step runs {tasks} task(s) (SLURM_STEP_NUM_TASKS) "
                          f"but the job requested {requested} (SLURM_NTASKS); start one "
                          f"training process per requested task: `srun albert-train ...` with "
                          f"no `--ntasks` of its own")
    hosts = expand_hostlist(env.get("SLURM_STEP_NODELIST", ""))
    per_node = expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", ""))
    if len(hosts) != len(per_node) or sum(per_node) != tasks or not 0 <= rank < tasks:
        raise ConfigError(f"SLURM's step variables disagree: SLURM_STEP_NODELIST="
                          f"{env.get('SLURM_STEP_NODELIST')!r} and SLURM_STEP_TASKS_PER_NODE="
                          f"{env.get('SLURM_STEP_TASKS_PER_NODE')!r} do not lay out "
                          f"SLURM_STEP_NUM_TASKS={tasks} tasks with SLURM_PROCID={rank}")
    workers = [f"{host}:{port + local}" for host, count in zip(hosts, per_node, strict=True)
               for local in range(count)]
    # SLURM's default (block) distribution numbers the tasks node by node, as `workers` does.
    host, _, own_port = workers[rank].rpartition(":")
    node, local = env.get("SLURMD_NODENAME", host), int(env.get("SLURM_LOCALID", 0))
    if (node, local) != (host, int(own_port) - port):
        raise ConfigError(f"SLURM task {rank} runs as local task {local} on {node}, not as "
                          f"task {int(own_port) - port} on {host}: lay the tasks out node by "
                          f"node (`srun --distribution=block`)")
    return Cluster("SLURM", {"worker": workers}, "worker", rank)


def _submitit_local(port: int) -> Cluster | None:
    env = os.environ
    if env.get("SUBMITIT_EXECUTOR") != "local" or "SUBMITIT_LOCAL_NTASKS" not in env:
        return None
    tasks = int(env["SUBMITIT_LOCAL_NTASKS"])
    workers = [f"127.0.0.1:{port + index}" for index in range(tasks)]
    return Cluster("submitit", {"worker": workers}, "worker",
                   int(env.get("SUBMITIT_LOCAL_GLOBALID", 0)))


def resolve_cluster(port: int = DEFAULT_PORT) -> Cluster | None:
    """The cluster this process belongs to (None: it trains alone); ConfigError when the
    scheduler's variables contradict each other.

    Args:
        port: the first port on each host (SLURM and submitit; TF_CONFIG names its own).
    """
    try:
        return _tf_config() or _slurm(port) or _submitit_local(port)
    except ValueError as error:  # TF_CONFIG that is not JSON, a variable that is not a number
        raise ConfigError(f"the cluster's environment variables cannot be read: {error}") from None


def no_cluster_hint() -> str:
    """Why `strategy=multi_worker` found no cluster, and what it looks for."""
    tasks = int(os.environ.get("SLURM_NTASKS", 1))
    if tasks > 1 and "SLURM_STEP_NUM_TASKS" not in os.environ:
        return (f"this SLURM job requested {tasks} tasks (SLURM_NTASKS) but this process was "
                f"not started by srun; start every worker with `srun albert-train ...`")
    return ("expected TF_CONFIG (a Kubernetes TFJob, or written by hand), an srun job step "
            "under SLURM, or a submitit job (hydra/launcher=submitit_slurm or submitit_local)")


def _lenient() -> Cluster | None:
    try:
        return resolve_cluster()
    except ConfigError:  # validate() reports it; callers here need only a guess
        return None


def cluster_source() -> str | None:
    """Where the cluster was read: `TF_CONFIG`, `SLURM`, `submitit` (None outside one)."""
    cluster = _lenient()
    return cluster.source if cluster else None


def cluster_workers() -> int:
    """How many processes train together (0 outside a cluster)."""
    cluster = _lenient()
    return len(cluster.workers) if cluster else 0


def task_index() -> int:
    """This process's index among them (0: the chief, or outside a cluster)."""
    cluster = _lenient()
    return cluster.index if cluster else 0


def is_chief() -> bool:
    """Whether this process writes the run folder: yes, unless it is a task of a cluster other
    than its first (the chief, or worker 0 when there is no chief)."""
    return task_index() == 0
