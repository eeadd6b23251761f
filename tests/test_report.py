"""`python -m app.report` on hand-written run folders (no training needed)."""

import csv
import json
import os
from pathlib import Path

import pytest
from conftest import run_command

from app.errors import ConfigError
from app.report import main, report
from app.runs.read import find_runs


def write_run(folder: Path, overrides: list[str], status: str, value: float | None = None,
              name: str = "val_accuracy", direction: str = "maximize",
              error: str | None = None, data: str = "sample") -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra/overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / ".hydra/config.yaml").write_text(f"data:\n  name: {data}\n  task: classification\n")
    payload = {"status": status, **({"error": error} if error else {})}
    (folder / "status.json").write_text(json.dumps(payload))
    if value is not None:
        metrics = {
            "final": {name: value, "val_loss": 1.0 - value},
            "history": {name: [value / 2, value], "val_loss": [1.0, 1.0 - value]},
            "optimized_metric": {"name": name, "value": value, "direction": direction},
            "wall_seconds": 12.5,
        }
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A 2x2 grid plus a failed job; job 10 sorts after job 2."""
    root = tmp_path / "multirun" / "2026-01-01_00-00-00"
    values = {"0": 0.70, "1": 0.80, "2": 0.75, "10": 0.60}
    grid = [("1e-4", "albert_tiny"), ("3e-4", "albert_tiny"), ("1e-4", "albert_small"),
            ("3e-4", "albert_small")]
    for job, (lr, model) in zip(values, grid, strict=True):
        write_run(root / job, [f"optimizer.learning_rate={lr}", f"model={model}", "seed=1"],
                  "completed", values[job])
    write_run(root / "11", ["optimizer.learning_rate=1e9", "model=albert_tiny", "seed=1"],
              "failed", error="ConfigError: the training loss became nan in epoch 1")
    write_run(root / "12", ["optimizer.learning_rate=1e-3", "model=albert_tiny", "seed=1"],
              "running")
    return root


def test_table_marks_the_best_and_lists_failures(sweep):
    rows, text = report(sweep)
    assert [row.job for row in rows] == ["0", "1", "2", "10", "11", "12"]
    assert [row.best for row in rows] == [False, True, False, False, False, False]
    lines = text.splitlines()
    assert lines[0].split() == ["best", "job", "model", "optimizer.learning_rate",
                                "val_accuracy", "val_loss", "status", "wall_s", "error"]
    assert lines[3].split() == ["*", "1", "albert_tiny", "0.0003", "0.8000", "0.2000",
                                "completed", "12.5"]
    assert lines[6].split()[:4] == ["11", "albert_tiny", "1e+09", "failed"]
    assert "training loss became nan" in lines[6]
    assert lines[7].split() == ["12", "albert_tiny", "0.001", "running"]
    assert "seed" not in lines[0]  # the same in every run


def test_csv_and_png(sweep):
    report(sweep)
    with (sweep / "report.csv").open() as stream:
        records = list(csv.DictReader(stream))
    assert [r["best"] for r in records] == ["0", "1", "0", "0", "0", "0"]
    assert records[1]["val_accuracy"] == "0.8" and records[1]["wall_seconds"] == "12.5"
    assert records[4]["status"] == "failed" and "nan" in records[4]["error"]
    assert records[0]["path"].endswith("/0")
    png = (sweep / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_minimized_metric_and_a_whole_tree(tmp_path):
    for i, value in enumerate([0.5, 0.2, 0.9]):
        write_run(tmp_path / "sts" / "multirun" / "t" / str(i), [f"seed={i}"], "completed",
                  value, name="val_mse", direction="minimize")
    write_run(tmp_path / "sst2" / "a", ["seed=1"], "completed", 0.8, data="sst2")
    write_run(tmp_path / "sst2" / "b", ["seed=2"], "completed", 0.9, data="sst2")
    write_run(tmp_path / "trec" / "a", ["seed=1"], "completed", 0.7, data="trec")
    rows, _ = report(tmp_path, draw=False)
    best = {row.job: row.best for row in rows}
    # One best per data set and optimized metric: the lowest MSE, the best of each accuracy.
    assert best == {"sst2/a": False, "sst2/b": True, "sts/multirun/t/0": False,
                    "sts/multirun/t/1": True, "sts/multirun/t/2": False, "trec/a": True}


def test_cli_prints_the_table(sweep, tmp_path, capsys, monkeypatch):
    assert run_command(monkeypatch, main, f"input={sweep}", f"csv={tmp_path / 'table.csv'}",
                       "plot=false") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("best  job  model")
    assert "6 runs: 4 completed, 1 failed, 1 running" in out
    assert (tmp_path / "table.csv").is_file() and not (sweep / "report.png").exists()


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="run folder does not exist. Received: '.*nowhere'"):
        report(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no run folders"):
        report(tmp_path)
    assert run_command(monkeypatch, main).startswith("error: `input` is required.")
    assert find_runs(tmp_path) == []


def test_find_runs_survives_a_folder_removed_mid_walk(tmp_path, monkeypatch):
    """A live run rotates its checkpoints while albert-report walks the sweep."""
    sweep = tmp_path / "sweep"
    for job in range(2):
        write_run(sweep / str(job), [f"seed={job}"], "running")
    rotated = sweep / "0/checkpoints/state/step-000000006"
    rotated.mkdir(parents=True)
    real_scandir = os.scandir

    def scandir_after_rotation(path):
        if Path(path) == rotated:
            rotated.rmdir()
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_after_rotation)
    assert [run.path.name for run in find_runs(sweep)] == ["0", "1"]
