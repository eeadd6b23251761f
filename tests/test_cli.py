"""The commands as a user runs them: run folder layout, determinism, help, clean failures."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_command

from app.config.schema import SCHEMAS, TrainConfig
from app.runtime.console import check_override_keys, config_groups
from app.runtime.native_logs import drop_native_lines, is_native_log_line

REPO = Path(__file__).resolve().parents[1]


def run_app(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "app", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
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


@pytest.mark.slow
def test_runs_get_their_own_folders_under_output_dir(tmp_path, sentiment_dir):
    result = run_app(*TINY, "data=tsv", f"data.dir={sentiment_dir}", "trainer.epochs=1",
                     f"paths.output_dir={tmp_path}", "name=tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "tiny").iterdir()
    assert (run_dir / "metrics.json").is_file()
    assert f"Run folder: {run_dir}" in result.stdout + result.stderr
    # TensorFlow's C++ start-up lines stay off the terminal; the app's own lines pass.
    native = [line for line in result.stderr.splitlines() if re.match(r"[IWE]\d{4} ", line)]
    assert not native, native
    assert re.search(r"step \d+/\d+ loss .* examples/s, \S+ left", result.stdout)


@pytest.mark.parametrize("command", sorted(SCHEMAS))
def test_every_command_lists_its_keys(command):
    module = "app.bench" if command == "bench" else f"app.{command}"
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert f"Usage: albert-{command}" in out and f"Keys (conf/{command}.yaml):" in out
    listed = {line.split(":")[0].strip() for line in out.splitlines()
              if re.match(r"  [a-z_]+:", line)}
    fields = {f.name for f in dataclasses.fields(SCHEMAS[command])}
    if command in ("train", "bench"):  # the groups are listed as groups, the rest as keys
        fields -= set(config_groups(TrainConfig)) | {"callbacks", "logger"}
    if command == "bench":  # and the training keys are albert-train's
        fields = {"bench"}
    assert fields <= listed, fields - listed


def test_unknown_keys_are_refused_naming_the_allowed_ones(monkeypatch):
    from app.train import main

    code = run_command(monkeypatch, main, "trainer.epoch=3")
    assert code.startswith("error: unknown key `trainer.epoch` for `trainer`.")
    assert "'epochs'" in code and "\n" not in code
    code = run_command(monkeypatch, main, "seeed=3")
    assert "unknown key `seeed` for this command" in code and "'seed'" in code
    assert "'model'" in code and "'experiment'" in code  # config groups are keys too
    # Hydra's own keys, groups and sweeps pass the check.
    check_override_keys(["hydra.run.dir=x", "model=albert_small", "-m", "--cfg", "job",
                         "+callbacks.x=1", "optimizer.learning_rate=1e-4,3e-4"], TrainConfig,
                        config_groups(TrainConfig))


def test_native_log_lines_are_recognized():
    assert is_native_log_line(b"I0000 00:00:1796167182.013279    4387 cudart_stub.cc:31] Could "
                              b"not find cuda drivers on your machine, GPU will not be used.")
    assert is_native_log_line(b"E0000 00:00:1796167186.744617    4387 cuda_platform.cc:52] fail")
    assert is_native_log_line(b"W1201 12:00:01.000001   12 dataset.cc:997] Input of ...")
    assert not is_native_log_line(b"F0000 00:00:17.0 1 x.cc:1] fatal: always shown")
    assert not is_native_log_line(b"[2026-12-01 23:19:47,001][app.train][INFO] - Reading data")
    assert not is_native_log_line(b"error: `data.dir` does not exist. Received: 'x'")


def test_continuation_lines_of_a_native_log_line_are_dropped_with_it():
    native = b"W0000 00:00:1796412308.879213    6366 op_kernel.cc:1857] OUT_OF_RANGE: End of"
    lines = [b"step 1", native, b"\t [[{{node MultiDeviceIteratorGetNextFromShard}}]]",
             b"  indented", b"step 2", b"\tan indented line of ours"]
    ours = [b"step 1", b"step 2", b"\tan indented line of ours"]
    assert drop_native_lines(lines, False) == (ours, False)
    # A continuation that arrives in the next chunk is dropped too.
    assert drop_native_lines([b"\t [[{{node x}}]]", b"next"], True) == ([b"next"], False)
    assert drop_native_lines([native], False) == ([], True)
