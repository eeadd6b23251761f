"""Chaos: a grid sweep whose jobs are each killed once at a random step (SIGKILL or SIGTERM),
then resumed until every job has completed, ends with the metrics of the same sweep left alone.

The kills come from a seeded RNG and the schedule is printed (`-s`). After each kill the
interrupted job is resumed with `resume=<job>`, and the grid points that never started are
launched as new sweeps (a job already killed is left to finish). Jobs are matched to grid
points by their overrides, not by folder.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY

from app.data import synthetic
from app.runs.read import find_runs

REPO = Path(__file__).resolve().parents[1]
GRID = {"optimizer.learning_rate": ["0.001", "0.003"], "seed": ["1", "2"]}
POINTS = [(lr, seed) for lr in GRID["optimizer.learning_rate"] for seed in GRID["seed"]]
STEPS = 2 * 20  # two epochs of 320 examples in batches of 16
SIGNALS = (signal.SIGKILL, signal.SIGTERM)


class Launcher:
    """Starts `python -m app` processes on one data set, their output appended to one file (a
    pipe nobody reads could fill), whose tail a failing assertion shows."""

    def __init__(self, data_dir: Path, output: Path):
        self.data_dir, self.output = data_dir, output

    def start(self, *args: str) -> subprocess.Popen:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        with self.output.open("a") as output:
            return subprocess.Popen([sys.executable, "-m", "app", *args], cwd=REPO, env=env,
                                    stdout=output, stderr=subprocess.STDOUT)

    def sweep(self, sweep_dir: Path, learning_rates: list[str], seeds: list[str]):
        """A grid sweep over learning_rates x seeds."""
        return self.start("-m", *TINY, "data=tsv", f"data.dir={self.data_dir}",
                          "trainer.deterministic=true", "trainer.checkpoint_every_n_steps=3",
                          "logger=none", f"optimizer.learning_rate={','.join(learning_rates)}",
                          f"seed={','.join(seeds)}", f"hydra.sweep.dir={sweep_dir}")

    def tail(self) -> str:
        return self.output.read_text()[-4000:]


def point_of(job: Path) -> tuple[str, str]:
    overrides = dict(o.split("=", 1) for o in
                     yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
    return overrides["optimizer.learning_rate"], overrides["seed"]


def steps_saved(job: Path) -> int:
    states = sorted((job / "checkpoints" / "state").glob("step-*/meta.json"))
    return int(states[-1].parent.name.split("-")[1]) if states else 0


def running_job(root: Path, pid: int) -> Path | None:
    """The job folder under `root` that process `pid` is training."""
    for run in find_runs(root) if root.is_dir() else []:
        if run.status.get("status") == "running" and run.status.get("pid") == pid:
            return run.path
    return None


def chaos(process: subprocess.Popen, root: Path, rng: random.Random, killed: dict) -> None:
    """Kill `process` with SIGKILL or SIGTERM once the job it trains, if not killed before, has
    saved a state a random number of steps past the one it started from; `killed` records
    each job's grid point and how."""
    target = None
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        job = running_job(root, process.pid)
        if job is not None and point_of(job) not in killed:
            if target is None or target[0] != job:
                ahead = rng.randrange(1, STEPS)
                target = (job, min(steps_saved(job) + ahead, STEPS), rng.choice(SIGNALS))
            if steps_saved(job) >= target[1]:
                time.sleep(rng.uniform(0, 0.5))
                process.send_signal(target[2])
                killed[point_of(job)] = f"{target[2].name} at step >= {target[1]} of {job.name}"
                break
        time.sleep(0.05)
    process.wait(timeout=600)


def final_metrics(root: Path) -> dict:
    return {point_of(run.path): (run.metrics["final"], run.metrics["history"]["val_loss"])
            for run in find_runs(root) if run.state == "completed"}


@pytest.mark.slow
def test_a_sweep_killed_at_random_steps_resumes_to_the_same_metrics(tmp_path):
    data_dir = tmp_path / "data"
    synthetic.write_tsv(data_dir / "train.tsv", ("sentence", "label"),
                        synthetic.sentiment_rows(320, seed=21))
    synthetic.write_tsv(data_dir / "dev.tsv", ("sentence", "label"),
                        synthetic.sentiment_rows(48, seed=22))
    launcher = Launcher(data_dir, tmp_path / "output.log")
    reference = launcher.sweep(tmp_path / "reference", *GRID.values())
    assert reference.wait(timeout=1800) == 0, launcher.tail()
    expected = final_metrics(tmp_path / "reference")
    assert set(expected) == set(POINTS)

    root, rng, killed = tmp_path / "chaos", random.Random(0), {}
    process = launcher.sweep(root / "sweep-0", *GRID.values())
    for attempt in range(4 * len(POINTS)):
        chaos(process, root, rng, killed)
        runs = find_runs(root)
        unfinished = [run.path for run in runs if run.state != "completed"]
        assert all(run.state in ("completed", "interrupted", "preempted") for run in runs), \
            ([(run.path, run.status) for run in runs], launcher.tail())
        started = {point_of(run.path) for run in runs}
        if unfinished:
            process = launcher.start(f"resume={unfinished[0]}")
        elif started != set(POINTS):  # never started: a sweep of the first of them
            lr, seed = next(p for p in POINTS if p not in started)
            process = launcher.sweep(root / f"sweep-{attempt + 1}", [lr], [seed])
        else:
            break
    print("chaos schedule:", *(f"{p}: {how}" for p, how in killed.items()), sep="\n  ")
    assert set(killed) == set(POINTS), killed  # every job was killed once
    assert final_metrics(root) == expected, launcher.tail()
    assert all(json.loads((run.path / "status.json").read_text()) == {"status": "completed"}
               for run in find_runs(root))
