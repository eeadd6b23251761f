"""The experiment-folder contract: status, env capture, atomic writes and export."""

import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import tensorflow as tf

from app.serving import export_saved_model

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
    write_json(run_dir / "status.json", {"status": status, **details})


def _git_state() -> dict:
    """Commit and dirty flag of the project checkout, when there is one."""
    root = Path(__file__).resolve().parent.parent

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


def export_run(model, preprocessor, run_dir: Path, label_names, sample_inputs) -> Path:
    """Export the trained task with its preprocessor: keras-hub preset, `.keras`, SavedModel.

    The SavedModel's serving signature takes raw strings (see app.serving). Also writes the
    label names beside the preset and the model's outputs on a few raw inputs
    (`sample_predictions.json`), so a reload can be checked against the run.
    """
    export_dir = run_dir / "export"
    model.preprocessor = preprocessor
    model.save_to_preset(str(export_dir / "preset"))
    model.save(export_dir / "model.keras")
    write_json(export_dir / "preset" / "labels.json", list(label_names))
    num_inputs = len(sample_inputs) if isinstance(sample_inputs, tuple) else 1
    export_saved_model(model, export_dir, label_names, num_inputs)
    outputs = model.predict(sample_inputs, verbose=0)
    inputs = [np.asarray(x).tolist() for x in
              (sample_inputs if isinstance(sample_inputs, tuple) else (sample_inputs,))]
    write_json(export_dir / "sample_predictions.json",
               {"inputs": inputs, "outputs": np.asarray(outputs).tolist()})
    return export_dir

