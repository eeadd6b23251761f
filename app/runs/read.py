"""Finished run folders: find them and read what they recorded.

A run folder is what `python -m app` writes (see app.runs.record): `status.json`, `.hydra/`,
`metrics.json`, `labels.json` (and a multi-label run's `thresholds.json`), `tokenizer/`,
`checkpoints/` and `export/`.

Reading a run needs no TensorFlow (app.tasks.inference loads its model).

Example:
    >>> run = open_run("experiments/default/2026-01-01_12-00-00")
    >>> run.state, run.metrics["final"], run.label_names
"""

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from app.config.schema import register_configs
from app.data.task import TaskSpec
from app.errors import ConfigError
from app.runs.layout import STATUS_FILE, RunLayout
from app.runs.record import HEARTBEAT_SECONDS, PATH_KEYS, process_start

# A `running` run on another host whose heartbeat is older than this is taken for dead. Ten
# beats: a long step that holds Python's lock (a SentencePiece training) can delay a few.
STALE_SECONDS = 10 * HEARTBEAT_SECONDS


@dataclass
class Run:
    """What one run folder recorded (missing files give empty values)."""

    path: Path
    status: dict
    config: DictConfig | None = None
    overrides: list[str] = field(default_factory=list)
    metrics: dict | None = None
    label_names: list[str] = field(default_factory=list)
    thresholds: dict[str, float] | None = None  # a multi-label run's thresholds.json

    @property
    def layout(self) -> RunLayout:
        """Where the run's files are."""
        return RunLayout(self.path)

    @property
    def state(self) -> str:
        """`running`, `completed`, `failed`, `preempted`, or `interrupted`: status.json says
        `running` but its process is gone (killed; resumable with `resume=`)."""
        state = self.status.get("status", "unknown")
        return "interrupted" if state == "running" and not is_alive(self.status) else state

    @property
    def task(self) -> TaskSpec:
        """The run's task: kind from its config, label names from `labels.json`, binary F1's
        positive label from `metrics.json` (the second label in runs that did not record one)."""
        if self.config is not None:
            kind = self.config.data.task
        else:
            kind = "classification" if self.label_names else "regression"
        if kind == "multilabel":
            return self._multilabel_task()
        return TaskSpec(kind=kind, label_names=tuple(self.label_names),
                        positive_label=(self.metrics or {}).get("positive_label"))

    def _multilabel_task(self) -> TaskSpec:
        """A multi-label run's task: its label separator, and the thresholds it stored
        (`data.threshold` for every label where it has none); never tuned again."""
        data = self.config.data
        stored = self.thresholds or {}
        missing = [name for name in self.label_names if name not in stored]
        if stored and missing:
            raise ConfigError(f"{self.layout.thresholds} has no threshold for label "
                              f"{missing[0]!r}; expected one per label of labels.json")
        default = float(OmegaConf.select(data, "threshold", default=0.5))
        return TaskSpec(kind="multilabel", label_names=tuple(self.label_names),
                        label_separator=OmegaConf.select(data, "label_separator", default=","),
                        thresholds=tuple(float(stored.get(name, default))
                                         for name in self.label_names))


def is_alive(status: dict, now: datetime | None = None) -> bool:
    """Whether the process a `running` status names still runs.

    On the same host: its process id exists and started when the run's did (not a later process
    given the same id). On another host: its heartbeat is younger than STALE_SECONDS. A status
    without host and heartbeat (written before they were recorded) counts as alive.
    """
    if status.get("host") == socket.gethostname() and status.get("pid"):
        pid = int(status["pid"])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
        return status.get("pid_start") in (None, process_start(pid))
    if not status.get("heartbeat"):
        return True
    age = ((now or datetime.now(UTC)) - datetime.fromisoformat(status["heartbeat"]))
    return age.total_seconds() < STALE_SECONDS


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def load_config(layout: RunLayout) -> DictConfig | None:
    """The run's config: `config.yaml` with its in-folder paths joined to where the folder is
    now (runs written before it existed: `.hydra/config.yaml`, as composed); None if neither."""
    if not layout.run_config.is_file():
        return OmegaConf.load(layout.hydra_config) if layout.hydra_config.is_file() else None
    config = OmegaConf.load(layout.run_config)
    root = layout.root.absolute()
    for key in PATH_KEYS:
        value = OmegaConf.select(config, key)
        if not isinstance(value, str) or "://" in value or Path(value).is_absolute():
            continue
        if key != "model.preset" or (root / value).exists():  # else a keras-hub preset name
            OmegaConf.update(config, key, str(root / value))
    return config


def read_run(path: str | Path) -> Run:
    """Read a run folder's status, config, overrides, metrics and labels."""
    register_configs()  # the `${app_resource:...}` resolver used by saved configs
    path = Path(path)
    layout = RunLayout(path)
    config = load_config(layout)
    overrides = list(OmegaConf.load(layout.overrides)) if layout.overrides.is_file() else []
    return Run(
        path=path,
        status=_read_json(layout.status) or {},
        config=config,
        overrides=[str(o) for o in overrides],
        metrics=_read_json(layout.metrics),
        label_names=_read_json(layout.labels) or [],
        thresholds=_read_json(layout.thresholds),
    )


def find_runs(root: str | Path) -> list[Run]:
    """Every run folder (one with a `status.json`) under `root`, `root` included.

    Sorted by path, job numbers numerically (`2` before `10`).
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"run folder does not exist. Received: '{root}'; expected a run folder, "
                          f"a sweep folder or an experiments tree")
    # os.walk skips folders that vanish mid-walk (a live run rotating its checkpoints),
    # where Path.rglob raises FileNotFoundError.
    found = (Path(folder) for folder, _, files in os.walk(root) if STATUS_FILE in files)
    return [read_run(folder) for folder in sorted(found, key=_natural_key)]


def _natural_key(path: Path) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def refuse_live_run(path: str | Path, key: str = "resume") -> None:
    """ConfigError when the run at `path` is still running (a live process writes into it)."""
    status = read_run(path).status
    if status.get("status") == "running" and is_alive(status):
        where = (f" as process {status['pid']} on host {status['host']}"
                 if status.get("pid") else "")
        beat = f", last heartbeat {status['heartbeat']}" if status.get("heartbeat") else ""
        raise ConfigError(f"`{key}` names a run that is still running{where}{beat}: '{path}'. "
                          f"Stop it first (a stopped or killed run reads `interrupted` in "
                          f"albert-report and can be resumed)")


def open_run(path: str | Path) -> Run:
    """A completed run to evaluate or predict with; ConfigError naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"`run` does not exist. Received: '{path}'; expected the folder of a "
                          f"finished run (with status.json, .hydra/ and export/)")
    run = read_run(path)
    if not run.status:
        raise ConfigError(f"`run` is not a run folder: no {STATUS_FILE}. Received: '{path}'")
    if run.state != "completed":
        error = f" ({run.status['error']})" if run.status.get("error") else ""
        raise ConfigError(f"`run` has not completed: its status is {run.state!r}{error}. "
                          f"Received: '{path}'; expected a completed run")
    if run.config is None:
        raise ConfigError(f"`run` has no .hydra/config.yaml, so its data settings are unknown. "
                          f"Received: '{path}'")
    return run
