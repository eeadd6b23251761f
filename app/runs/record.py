"""What a run records about itself: atomic JSON writes, its status and its environment."""

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from omegaconf import DictConfig, OmegaConf

from app.runs.layout import RunLayout
from app.runtime.cluster import Cluster, cluster_source
from app.runtime.cpu import APPLIED, MALLOC_ENV, ONEDNN

if TYPE_CHECKING:  # app.runs.read imports this module and needs no TensorFlow
    import tensorflow as tf

PACKAGES = ("tensorflow", "tensorflow-text", "keras", "keras-hub", "hydra-core", "omegaconf",
            "tensorboard", "sentencepiece", "numpy", "scikit-learn", "scipy", "albert-trainer")


# Config keys that hold a path. In the run folder's config.yaml each is absolute, or relative to
# the run folder when it points inside it, so the folder works from any working directory and
# after a move (see app.runs.read.load_config).
PATH_KEYS = ("paths.data_dir", "paths.output_dir", "data.dir", "data.prepared", "tokenizer.proto",
             "model.preset", "resume")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[TextIO]:
    """A text stream to a temporary file in `path`'s folder, renamed to `path` when the block
    ends without an error (and removed when it raises): readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as out:
        try:
            yield out
        except BaseException:
            out.close()
            Path(out.name).unlink(missing_ok=True)
            raise
    os.replace(out.name, path)


def write_json(path: Path, payload) -> None:
    """Write JSON atomically."""
    with atomic_file(path) as out:
        json.dump(payload, out, indent=2, sort_keys=True, default=str)
        out.write("\n")


def local_path(key: str, value) -> Path | None:
    """The local path a PATH_KEYS value names, or None (unset, a URL such as `hf://...`, or a
    `model.preset` that is a keras-hub preset name rather than a folder)."""
    if not isinstance(value, str) or "://" in value:
        return None
    path = Path(value).expanduser()
    return None if key == "model.preset" and not path.exists() else path


def write_run_config(cfg: DictConfig, layout: RunLayout) -> None:
    """Save the run's config, resolved, with the paths of PATH_KEYS absolute (from the
    working directory) or relative to the run folder when inside it, as `config.yaml`."""
    config = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    root = layout.root.resolve()
    for key in PATH_KEYS:
        path = local_path(key, OmegaConf.select(config, key))
        if path is not None:
            path = path.resolve()
            OmegaConf.update(config, key, str(path.relative_to(root))
                             if path.is_relative_to(root) else str(path))
    with atomic_file(layout.run_config) as out:
        out.write(OmegaConf.to_yaml(config))


HEARTBEAT_SECONDS = 30.0  # how often a running run rewrites its status.json


def write_status(run_dir: Path, status: str, **details) -> None:
    """Record whether the run is `running`, `completed`, `preempted`, `interrupted` (a lost
    worker) or `failed` (with an error)."""
    write_json(RunLayout(run_dir).status, {"status": status, **details})


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), to tell it from a later
    process given the same id; None where /proc is not available or the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22; the name in () may hold spaces


class Heartbeat:
    """status.json says `running`, with the host, the process id and a heartbeat time that a
    daemon thread renews every `interval` seconds while the `with` block runs.

    `app.runs.read` tells a dead `running` run (`interrupted`) from a live one by them.

    Args:
        run_dir: the run folder.
        interval: seconds between heartbeats.
    """

    def __init__(self, run_dir: Path, interval: float = HEARTBEAT_SECONDS):
        self.run_dir, self.interval = run_dir, interval
        self.stopped = threading.Event()
        pid = os.getpid()
        self.status = {"host": socket.gethostname(), "pid": pid, "pid_start": process_start(pid),
                       "started": _now()}
        self.thread = threading.Thread(target=self._beat, name="status-heartbeat", daemon=True)

    def _write(self) -> None:
        write_status(self.run_dir, "running", **self.status, heartbeat=_now())

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self._write()
            except OSError:
                continue  # a full disk or a lost mount: the next beat tries again

    def __enter__(self) -> "Heartbeat":
        self._write()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git_state() -> dict:
    """Commit and dirty flag of the project checkout, when there is one."""
    root = Path(__file__).resolve().parents[2]

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cluster(strategy: "tf.distribute.Strategy") -> dict | None:
    """A multi-worker run's cluster: where it was read, every worker's address, this one's."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    resolver = strategy.cluster_resolver
    return Cluster(cluster_source(), resolver.cluster_spec().as_dict(), resolver.task_type,
                   resolver.task_id).describe()


def capture_env(strategy: "tf.distribute.Strategy", seed: int) -> dict:
    """Everything needed to tell how and where a run ran."""
    import tensorflow as tf

    return {
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "python": sys.version.split()[0],
        "packages": _versions(),
        "git": _git_state(),
        "hardware": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
            "devices": [d.name for d in tf.config.list_logical_devices()],
        },
        "strategy": {"class": type(strategy).__name__,
                     "num_replicas": strategy.num_replicas_in_sync},
        "cluster": _cluster(strategy),
        # The CPU settings in force: the environment's, and what app.runtime.cpu set.
        "cpu_settings": {"environment": {name: os.environ[name] for name in (ONEDNN, *MALLOC_ENV)
                                         if name in os.environ},
                         "set_by_app": dict(APPLIED)},
        "seed": seed,
    }
