"""Step-exact resume: SIGKILL at random steps, SIGTERM/SIGINT preemption, then resume to the
same final weights and metrics as an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TINY
from omegaconf import OmegaConf

from app.data import synthetic
from app.errors import PREEMPTED_EXIT_CODE
from app.runs.read import read_run

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 25  # 400 examples / batch 16


@pytest.fixture(scope="module")
def long_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume-data")
    synthetic.write_tsv(out / "train.tsv", ("sentence", "label"),
                        synthetic.sentiment_rows(400, seed=11))
    synthetic.write_tsv(out / "dev.tsv", ("sentence", "label"),
                        synthetic.sentiment_rows(48, seed=12))
    return out


def overrides(data_dir: Path, run_dir: Path) -> list[str]:
    # Dropout stays on: resume must restore the dropout RNG state too.
    return [*TINY, "data=tsv", f"data.dir={data_dir}", "trainer.deterministic=true",
            "trainer.epochs=2", "trainer.checkpoint_every_n_steps=4", "logger=none",
            f"hydra.run.dir={run_dir}"]


def start(*args: str, cwd: Path = REPO, command: str = "app") -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", command, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, expected: int = 0) -> str:
    try:
        output, _ = process.communicate(timeout=400)
    finally:
        process.kill()
    assert process.returncode == expected, output[-4000:]
    return output


def saved_steps(run_dir: Path) -> list[int]:
    state = run_dir / "checkpoints" / "state"
    if not state.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in state.glob("step-*")
                  if (p / "meta.json").exists())


def wait_for_step(process: subprocess.Popen, run_dir: Path, step: int) -> None:
    deadline = time.monotonic() + 300
    while not saved_steps(run_dir) or saved_steps(run_dir)[-1] < step:
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)


def outcome(run_dir: Path) -> tuple[dict, list[np.ndarray]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    weights = keras.saving.load_model(run_dir / "export" / "model.keras").get_weights()
    return metrics, weights


def assert_same_outcome(run_dir: Path, reference: Path) -> None:
    (metrics, weights), (expected, expected_weights) = outcome(run_dir), outcome(reference)
    assert metrics["final"] == expected["final"]
    assert metrics["history"]["val_loss"] == expected["history"]["val_loss"]
    for got, want in zip(weights, expected_weights, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def reference(long_data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    finish(start(*overrides(long_data, run_dir)))
    assert saved_steps(run_dir)[-1] == 2 * STEPS_PER_EPOCH
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [4, 23, 33])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, long_data, reference,
                                                        kill_after):
    run_dir = tmp_path / "run"
    process = start(*overrides(long_data, run_dir))
    wait_for_step(process, run_dir, kill_after)
    process.kill()
    process.wait()
    killed_at = saved_steps(run_dir)[-1]
    assert killed_at < 2 * STEPS_PER_EPOCH
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"
    assert read_run(run_dir).state == "interrupted"  # what albert-report shows
    output = finish(start(f"resume={run_dir}"))
    assert f"step {killed_at}" in output
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert_same_outcome(run_dir, reference)


@pytest.mark.parametrize("signum", [signal.SIGTERM,
                                    pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_saves_exits_and_resumes(tmp_path, long_data, reference, signum):
    run_dir = tmp_path / "run"
    process = start(*overrides(long_data, run_dir))
    wait_for_step(process, run_dir, 4)
    process.send_signal(signum)
    sent = time.monotonic()
    finish(process, expected=PREEMPTED_EXIT_CODE)
    assert time.monotonic() - sent < 30
    status = json.loads((run_dir / "status.json").read_text())
    assert status == {"status": "preempted", "step": saved_steps(run_dir)[-1]}
    finish(start(f"resume={run_dir}"))
    assert_same_outcome(run_dir, reference)
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert len(list((run_dir / ".hydra").glob("resume-*"))) == 1


def test_resume_of_a_folder_without_state_fails_clearly(tmp_path):
    result = finish(start(f"resume={tmp_path}"), expected=1)
    assert "`resume` must name a run folder with a saved config" in result


def test_nonfinite_loss_fails_naming_the_step_and_keeps_good_states(tmp_path, long_data):
    run_dir = tmp_path / "run"
    output = finish(start(*overrides(long_data, run_dir), "optimizer.learning_rate=1e12",
                          "optimizer.global_clipnorm=null"), expected=1)
    assert "the training loss became nan or inf at step" in output
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "TrainingDiverged" in status["error"]
    assert not (run_dir / "metrics.json").exists()
    for step in saved_steps(run_dir):
        state = np.load(run_dir / f"checkpoints/state/step-{step:09d}/variables.npz")
        assert all(np.isfinite(state[name]).all() for name in state.files
                   if state[name].dtype.kind == "f")


def test_nonfinite_loss_rolls_back_with_a_lower_learning_rate(tmp_path, long_data):
    run_dir = tmp_path / "run"
    output = finish(start(*overrides(long_data, run_dir), "optimizer.learning_rate=1e12",
                          "optimizer.global_clipnorm=null", "trainer.on_nonfinite_loss=rollback",
                          "trainer.rollback_lr_factor=1e-15", "trainer.max_rollbacks=1"))
    assert "rolled back to step" in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(np.isfinite(metrics["history"]["val_loss"]))
    # The reduced rate is part of every later state, so a resume keeps it.
    last = run_dir / f"checkpoints/state/step-{saved_steps(run_dir)[-1]:09d}/meta.json"
    assert json.loads(last.read_text())["learning_rate_factor"] == pytest.approx(1e-15)


def test_resume_of_a_completed_run_is_refused_and_changes_nothing(reference):
    before = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()}
    output = finish(start(f"resume={reference}"), expected=1)
    assert "`resume` names a run that already completed" in output
    after = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()
             if ".hydra/resume-" not in str(p) and p.name != "train.log"}
    assert after == {p: b for p, b in before.items() if p.name != "train.log"}


def wait_for(process: subprocess.Popen, ready) -> None:
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["middle_evaluation", "final_evaluation", "export"])
def test_sigkill_at_an_epoch_end_or_export_then_resume_completes_the_same(
        tmp_path, long_data, reference, moment):
    """Killed while an epoch is evaluated (its state is saved only after that) or while the
    run exports: the resume finishes what is missing and ends as an uninterrupted run."""
    run_dir = tmp_path / "run"
    every = "trainer.checkpoint_every_n_steps=5"  # divides the epoch: 25 batches
    process = start(*overrides(long_data, run_dir), every)
    history = run_dir / "history.json"
    ready = {
        "middle_evaluation": lambda: 20 in saved_steps(run_dir),
        "final_evaluation": lambda: 45 in saved_steps(run_dir),
        "export": lambda: (run_dir / "export" / "preset" / "config.json").is_file(),
    }[moment]
    wait_for(process, ready)
    if moment != "export":  # into the epoch's last batches and its evaluation
        time.sleep(0.3)
    process.kill()
    process.wait()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"
    if moment == "middle_evaluation" and history.is_file():
        # Whatever the kill interrupted, no epoch-end state exists without its history entry.
        assert 25 not in saved_steps(run_dir) or "0" in json.loads(history.read_text())
    finish(start(f"resume={run_dir}"))
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert_same_outcome(run_dir, reference)
    assert json.loads(history.read_text()).keys() == {"0", "1"}


@pytest.mark.slow
def test_with_the_default_checkpoints_a_sigkill_leaves_a_resumable_run(tmp_path, long_data,
                                                                        reference):
    run_dir = tmp_path / "run"
    args = [a for a in overrides(long_data, run_dir) if "checkpoint_every_n_steps" not in a]
    process = start(*args)
    wait_for(process, lambda: STEPS_PER_EPOCH in saved_steps(run_dir))
    process.kill()
    process.wait()
    finish(start(f"resume={run_dir}"))
    assert_same_outcome(run_dir, reference)


@pytest.mark.slow
def test_a_moved_run_folder_resumes_and_evaluates_from_another_directory(tmp_path, long_data,
                                                                          reference):
    # Started with relative paths (data and run folder) from one directory, stopped, moved,
    # then resumed and evaluated from another: the run reads its data by the absolute path it
    # recorded, and its own files where the folder is now.
    launch, elsewhere = tmp_path / "launch", tmp_path / "elsewhere"
    launch.mkdir()
    elsewhere.mkdir()
    (launch / "data").symlink_to(long_data)
    args = [a for a in overrides(long_data, Path("runs/run")) if not a.startswith("data.dir")]
    process = start(*args, "data.dir=data", cwd=launch)
    wait_for_step(process, launch / "runs" / "run", 4)
    process.send_signal(signal.SIGTERM)
    finish(process, expected=PREEMPTED_EXIT_CODE)
    saved = OmegaConf.load(launch / "runs" / "run" / "config.yaml")
    assert saved.data.dir == str(long_data.resolve()) and saved.resume is None
    moved = elsewhere / "moved"
    shutil.move(launch / "runs" / "run", moved)
    finish(start(f"resume={moved}", cwd=elsewhere))
    assert json.loads((moved / "status.json").read_text())["status"] == "completed"
    assert_same_outcome(moved, reference)
    finish(start(f"run={moved}", cwd=tmp_path, command="app.evaluate"))
    evaluation = json.loads((moved / "eval_dev.json").read_text())
    assert evaluation["metrics"]["accuracy"] == pytest.approx(
        json.loads((moved / "metrics.json").read_text())["final"]["val_accuracy"], abs=1e-6)
