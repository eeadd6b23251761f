"""What a run folder records about itself: an honest status (a running run records host,
process and heartbeat; a dead one reads `interrupted`, a live one is refused by `resume=`) and
a config whose paths work from anywhere."""

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import compose_config, run_command
from omegaconf import OmegaConf

from app import __main__ as train_command
from app.errors import ConfigError
from app.runs.layout import RunLayout
from app.runs.read import STALE_SECONDS, is_alive, load_config, read_run
from app.runs.record import Heartbeat, process_start, write_run_config, write_status
from app.training.resume import resumed_config


def status_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def test_heartbeat_renews_while_running_and_stops_after(tmp_path):
    with Heartbeat(tmp_path, interval=0.05):
        first = status_of(tmp_path)
        assert first["status"] == "running" and first["pid"] == os.getpid()
        assert first["host"] == socket.gethostname()
        deadline = time.monotonic() + 30
        while status_of(tmp_path)["heartbeat"] == first["heartbeat"]:
            assert time.monotonic() < deadline, "the heartbeat was never renewed"
            time.sleep(0.05)
        assert read_run(tmp_path).state == "running"
    write_status(tmp_path, "completed")
    time.sleep(0.2)  # a beat that outlived the block would overwrite the final status
    assert status_of(tmp_path) == {"status": "completed"}


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def beat(**fields) -> dict:
    return {"status": "running", "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "heartbeat": datetime.now(UTC).isoformat(timespec="seconds"), **fields}


def test_a_dead_process_reads_interrupted_and_a_live_one_running(tmp_path):
    assert is_alive(beat())
    assert not is_alive(beat(pid=dead_pid()))
    if process_start(os.getpid()) is not None:  # Linux: an id reused by a later process
        assert not is_alive(beat(pid_start="1"))
    now = datetime.now(UTC)
    stale = (now - timedelta(seconds=STALE_SECONDS + 1)).isoformat()
    assert not is_alive(beat(host="elsewhere", heartbeat=stale), now)
    assert is_alive(beat(host="elsewhere"), now)
    assert is_alive({"status": "running"})  # written before heartbeats: taken as alive
    (tmp_path / "status.json").write_text(json.dumps(beat(pid=dead_pid())))
    assert read_run(tmp_path).state == "interrupted"


def test_resume_refuses_a_live_run_and_names_its_process(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("name: x\n")
    (run_dir / "checkpoints" / "state" / "step-3").mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps(beat()))
    with pytest.raises(ConfigError, match=rf"still running as process {os.getpid()} on host"):
        resumed_config(str(run_dir))
    code = run_command(monkeypatch, train_command.main, f"resume={run_dir}")
    assert isinstance(code, str) and "still running" in code
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "checkpoints", "status.json"]
    assert status_of(run_dir)["pid"] == os.getpid()


def test_the_saved_config_holds_absolute_data_paths_and_moves_with_its_folder(tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "mine").mkdir(parents=True)
    run_dir = Path("runs/run")  # relative, as Hydra's default
    cfg = compose_config("paths.data_dir=data", "data=tsv", "data.dir=${paths.data_dir}/mine",
                         f"tokenizer.proto={run_dir}/tokenizer/spm.model")
    write_run_config(cfg, RunLayout(run_dir))
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.data.dir == str(tmp_path / "data" / "mine")
    assert saved.paths.data_dir == str(tmp_path / "data")
    assert saved.tokenizer.proto == "tokenizer/spm.model"  # inside the folder: relative to it
    assert saved.model.preset is None and saved.optimizer.learning_rate == \
        OmegaConf.to_container(cfg, resolve=True)["optimizer"]["learning_rate"]
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    Path("runs/run").rename(moved)
    monkeypatch.chdir(moved.parent)
    loaded = load_config(RunLayout(Path("run")))
    assert loaded.tokenizer.proto == str(moved / "tokenizer" / "spm.model")
    assert loaded.data.dir == str(tmp_path / "data" / "mine")
