"""What a run records about itself: atomic JSON writes, its status and its environment."""

import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import tensorflow as tf

from app.runs.layout import RunLayout

PACKAGES = ("tensorflow", "tensorflow-text", "keras", "keras-hub", "hydra-core", "omegaconf",
            "tensorboard", "sentencepiece", "numpy", "scikit-learn", "scipy", "albert-trainer")


def write_json(path: Path, payload) -> None:
    """Write JSON atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as out:
        json.dump(payload, out, indent=2, sort_keys=True, default=str)
        out.write("\n")
    os.replace(out.name, path)


def write_status(run_dir: Path, status: str, **details) -> None:
    """Record whether the run is `running`, `completed` or `failed` (with an error)."""
    write_json(RunLayout(run_dir).status, {"status": status, **details})


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


def capture_env(strategy: tf.distribute.Strategy, seed: int) -> dict:
    """Everything needed to tell how and where a run ran."""
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
        "seed": seed,
    }
