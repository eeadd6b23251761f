"""Finished run folders: find them and read what they recorded.

A run folder is what `python -m app` writes (see app.runs.record): `status.json`, `.hydra/`,
`metrics.json`, `labels.json`, `tokenizer/`, `checkpoints/` and `export/`.

Reading a run needs no TensorFlow (app.tasks.inference loads its model).

Example:
    >>> run = open_run("experiments/default/2026-01-01_12-00-00")
    >>> run.state, run.metrics["final"], run.label_names
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from app.config.schema import register_configs
from app.data.task import TaskSpec
from app.errors import ConfigError
from app.runs.layout import STATUS_FILE, RunLayout


@dataclass
class Run:
    """What one run folder recorded (missing files give empty values)."""

    path: Path
    status: dict
    config: DictConfig | None = None
    overrides: list[str] = field(default_factory=list)
    metrics: dict | None = None
    label_names: list[str] = field(default_factory=list)

    @property
    def layout(self) -> RunLayout:
        """Where the run's files are."""
        return RunLayout(self.path)

    @property
    def state(self) -> str:
        """`running`, `completed` or `failed`."""
        return self.status.get("status", "unknown")

    @property
    def task(self) -> TaskSpec:
        """The run's task: kind from its config, label names from `labels.json`."""
        if self.config is not None:
            kind = self.config.data.task
        else:
            kind = "classification" if self.label_names else "regression"
        return TaskSpec(kind=kind, label_names=tuple(self.label_names))


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def read_run(path: str | Path) -> Run:
    """Read a run folder's status, config, overrides, metrics and labels."""
    register_configs()  # the `${app_resource:...}` resolver used by saved configs
    path = Path(path)
    layout = RunLayout(path)
    config = OmegaConf.load(layout.hydra_config) if layout.hydra_config.is_file() else None
    overrides = list(OmegaConf.load(layout.overrides)) if layout.overrides.is_file() else []
    return Run(
        path=path,
        status=_read_json(layout.status) or {},
        config=config,
        overrides=[str(o) for o in overrides],
        metrics=_read_json(layout.metrics),
        label_names=_read_json(layout.labels) or [],
    )


def find_runs(root: str | Path) -> list[Run]:
    """Every run folder (one with a `status.json`) under `root`, `root` included.

    Sorted by path, job numbers numerically (`2` before `10`).
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"run folder does not exist. Received: '{root}'; expected a run folder, "
                          f"a sweep folder or an experiments tree")
    folders = sorted((p.parent for p in root.rglob(STATUS_FILE)), key=_natural_key)
    return [read_run(folder) for folder in folders]


def _natural_key(path: Path) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


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
