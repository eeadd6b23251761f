"""`python -m app` as a user runs it: run folder layout, determinism, and clean failures."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def run_app(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "app", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_same_seed_gives_identical_metrics(tmp_path, sentiment_dir):
    common = [*TINY, "data=tsv", f"data.dir={sentiment_dir}", "trainer.deterministic=true",
              "seed=3"]
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        result = run_app(*common, f"hydra.run.dir={run_dir}")
        assert result.returncode == 0, result.stderr[-3000:]
    first, second = (json.loads((r / "metrics.json").read_text()) for r in runs)
    assert first["history"] == second["history"]
    assert first["final"] == second["final"]
    for run_dir in runs:
        assert (run_dir / ".hydra/config.yaml").is_file()
        assert (run_dir / ".hydra/overrides.yaml").is_file()
        log = (run_dir / "train.log").read_text()
        assert "Completed in" in log
        progress = r"step \d+/\d+ loss [\d.]+ .*accuracy [\d.]+ .*lr \S+ [\d.]+ examples/s"
        assert re.search(progress, log)
    env = json.loads((runs[0] / "env.json").read_text())
    assert env["seed"] == 3 and "trainer.deterministic=true" in env["command"]


def test_bad_input_fails_before_training_with_a_clear_message(tmp_path):
    run_dir = tmp_path / "run"
    result = run_app("data=tsv", f"data.dir={tmp_path / 'nowhere'}", f"hydra.run.dir={run_dir}")
    assert result.returncode != 0
    assert "`data.dir` does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "checkpoints").exists()


def test_runs_get_their_own_folders_under_output_dir(tmp_path, sentiment_dir):
    result = run_app(*TINY, "data=tsv", f"data.dir={sentiment_dir}", "trainer.epochs=1",
                     f"paths.output_dir={tmp_path}", "name=tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "tiny").iterdir()
    assert (run_dir / "metrics.json").is_file()
    assert f"Run folder: {run_dir}" in result.stdout + result.stderr
