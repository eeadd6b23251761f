"""Multi-worker training from the scheduler's environment (TF_CONFIG, SLURM, submitit): the
cluster each process resolves, the submitit_local launcher, bad input as one line, and a lost
worker ending the run with one line and a resumable folder."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TINY, compose_config, run_command
from test_distributed import EXACT, history
from test_prepare import SEQUENCE_LENGTH, prepared_overrides
from test_prepared_resume import corpus_file, prepared, proto  # noqa: F401 (fixtures)

from app.config.schema import job_subdir
from app.config.validate import validate
from app.data.pretraining.shards import SOURCE_FILE, open_prepared, pipeline_steps
from app.errors import ConfigError
from app.runs.read import read_run
from app.runtime.cluster import expand_hostlist, expand_tasks_per_node, is_chief, resolve_cluster
from app.runtime.native_logs import drop_native_lines

REPO = Path(__file__).resolve().parents[1]
SCHEDULER_PREFIXES = ("SLURM", "SUBMITIT_")


@pytest.fixture
def env(monkeypatch):
    """No cluster in the environment, then the variables a test sets."""
    for name in list(os.environ):
        if name == "TF_CONFIG" or name.startswith(SCHEDULER_PREFIXES):
            monkeypatch.delenv(name)

    def set_env(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_env


def slurm_step(rank: int, node: str, local: int, **overrides: str) -> dict[str, str]:
    """`srun` on 2 nodes with 2 tasks each, as task `rank` sees it."""
    return {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4",
            "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(local), "SLURMD_NODENAME": node,
            "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
            **overrides}


# === The cluster each source describes ===

def test_tf_config_orders_the_chief_first(env):
    cluster = {"chief": ["c:1"], "worker": ["w:1", "w:2"], "ps": ["p:1"]}
    env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    resolved = resolve_cluster()
    assert (resolved.source, resolved.workers, resolved.index) == (
        "TF_CONFIG", ["c:1", "w:1", "w:2"], 2)
    assert not is_chief()
    env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}))
    assert is_chief()


def test_slurm_step_lays_the_tasks_out_node_by_node(env):
    env(**slurm_step(3, "gpu08", 1))
    resolved = resolve_cluster(port=2000)
    assert resolved.describe() == {
        "source": "SLURM", "workers": ["gpu07:2000", "gpu07:2001", "gpu08:2000", "gpu08:2001"],
        "index": 3, "address": "gpu08:2001", "chief": "gpu07:2000"}
    assert not is_chief()
    assert expand_hostlist("n[1-2,05],m,a-b[9-10]") == ["n1", "n2", "n05", "m", "a-b9", "a-b10"]
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]


def test_submitit_local_tasks_listen_on_consecutive_ports(env):
    env(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_NTASKS="2", SUBMITIT_LOCAL_GLOBALID="1")
    resolved = resolve_cluster(port=3000)
    assert (resolved.source, resolved.workers, resolved.index) == (
        "submitit", ["127.0.0.1:3000", "127.0.0.1:3001"], 1)
    # Its Hydra job folder: beside the chief's, never inside it; a resume continues the run's.
    assert job_subdir(4, None) == "4_task1"
    env(SUBMITIT_LOCAL_GLOBALID="0")
    assert (job_subdir(4, None), job_subdir(4, "runs/x")) == ("4", os.path.abspath("runs/x"))


# === Bad input: one line each ===

@pytest.mark.parametrize("variables, message", [
    (slurm_step(1, "gpu07", 1, SLURM_STEP_NUM_TASKS="2", SLURM_STEP_TASKS_PER_NODE="2"),
     "this SLURM job step runs 2 task(s) (SLURM_STEP_NUM_TASKS) but the job requested 4"),
    (slurm_step(1, "gpu07", 1, SLURM_STEP_TASKS_PER_NODE="2,1"),
     "SLURM's step variables disagree"),
    (slurm_step(1, "gpu08", 0), "lay the tasks out node by node (`srun --distribution=block`)"),
    ({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"},
     "requested 4 tasks (SLURM_NTASKS) but this process was not started by srun"),
    ({}, "`strategy.name` is 'multi_worker' but the environment names no cluster: expected "
         "TF_CONFIG"),
], ids=["step-against-job", "nodes-against-tasks", "not-block", "no-srun", "no-cluster"])
def test_a_cluster_that_cannot_train_is_refused_before_any_work(env, variables, message):
    env(**variables)
    cfg = compose_config(*TINY, "strategy=multi_worker")
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(cfg)


def test_no_cluster_is_one_error_line(env, monkeypatch, tmp_path, sentiment_dir):
    from app.train import main

    code = run_command(monkeypatch, main, *TINY, "data=tsv", f"data.dir={sentiment_dir}",
                       "strategy=multi_worker", f"hydra.run.dir={tmp_path / 'run'}")
    assert code.startswith("error: `strategy.name` is 'multi_worker' but the environment names "
                           "no cluster") and "\n" not in code, code


def test_a_job_of_two_tasks_refuses_a_one_process_strategy(env):
    env(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_NTASKS="2", SUBMITIT_LOCAL_GLOBALID="0")
    with pytest.raises(ConfigError, match="2 processes were started as one submitit job .* "
                                          "`strategy.name` is 'cpu'"):
        validate(compose_config(*TINY, "strategy=cpu"))


def test_a_port_in_use_is_named(env):
    from app.runtime.multi_worker import multi_worker_strategy

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_NTASKS="2", SUBMITIT_LOCAL_GLOBALID="0")
        cfg = compose_config(*TINY, "strategy=multi_worker", f"strategy.port={port}")
        with pytest.raises(ConfigError, match=rf"worker 0 cannot listen on 127.0.0.1:{port}: "
                                              rf"port {port} is in use on this host; free it or "
                                              rf"set `strategy.port`"):
            multi_worker_strategy(cfg.strategy)


def test_a_lost_workers_status_message_stays_off_the_terminal():
    # As TensorFlow 2.21 logs a collective aborted by a dead peer (several lines, one write).
    native = [b"E0000 00:00:1796674774.336305    4501 base_collective_executor.cc:252] "
              b"BaseCollectiveExecutor::StartAbort UNAVAILABLE: Error reported from "
              b"/job:worker/task:1: The following tasks are unhealthy (stopped sending "
              b"heartbeats):", b"/job:worker/replica:0/task:1",
              b"The tasks have crashed. Check the task logs for an earlier error.", b"",
              b"RPC: /tensorflow.CoordinationService/Heartbeat",
              b"The error could be from a previous operation. Restart your program to reset.",
              b"\t [[{{node CollectiveReduceV2}}]] [type.googleapis.com/tensorflow.Derived='']"]
    ours = [b"error: worker 1 (127.0.0.1:2) of the 2 stopped answering", b"The end"]
    assert drop_native_lines([*native, *ours], False) == (ours, False)


# === Processes ===

def free_port_pair() -> int:
    """A port P with P and P + 1 free on 127.0.0.1."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m app` as a user starts it: TensorFlow's C++ lines go through the app's filter
    (no TF_CPP_MIN_LOG_LEVEL), in a session of its own (to kill a whole submitit job)."""
    variables = {name: value for name, value in os.environ.items()
                 if name != "TF_CPP_MIN_LOG_LEVEL" and not name.startswith(SCHEDULER_PREFIXES)}
    return subprocess.Popen([sys.executable, "-m", "app", *args], cwd=REPO,
                            env={**variables, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(process: subprocess.Popen, expected: int = 0, timeout: int = 400) -> str:
    """The output once the process ends; its whole session (a submitit job's tasks included)
    is killed after it."""
    try:
        output = process.communicate(timeout=timeout)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == expected, output[-4000:]
    return output


def tf_config_workers(run_dirs: list[Path], *args: str,
                      extra: tuple = ((), ())) -> tuple[list[subprocess.Popen], list[str]]:
    """Two loopback workers from TF_CONFIG (worker 0 is the chief); `extra[i]`: worker i's own
    overrides."""
    port = free_port_pair()
    addresses = [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]
    return [start(*args, *extra[index], f"hydra.run.dir={run_dir}", env={"TF_CONFIG": json.dumps(
        {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})})
        for index, run_dir in enumerate(run_dirs)], addresses


def saved_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1])
                  for p in (run_dir / "checkpoints" / "state").glob("step-*")
                  if (p / "meta.json").is_file())


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.fixture
def two_epochs(tmp_path, sentiment_dir) -> tuple[list[str], Path]:
    """The overrides of a 2-epoch run (24 steps, a state every 4) and its single-process run."""
    args = [*EXACT, "trainer.epochs=2", "trainer.checkpoint_every_n_steps=4", "data=tsv",
            f"data.dir={sentiment_dir}"]
    single = tmp_path / "single"
    finish(start(*args, "strategy=cpu", f"hydra.run.dir={single}"))
    return args, single


def assert_same_as_one_process(run_dir: Path, single: Path) -> None:
    """Every evaluation and the first epoch's training loss (a resumed epoch's averages only
    the steps after the resume) within test_distributed's multi-worker tolerance (rtol 1e-4);
    the exported weights within 1e-4, a tenth of one update at the learning rate of 1e-3 (two
    replicas sum the gradients in another order, and Adam's normalized steps carry that into
    weights near 0: measured up to 8e-6)."""
    got, want = history(run_dir), history(single)
    print(f"val_loss {got['val_loss']} vs one process {want['val_loss']}; first epoch's loss "
          f"{got['loss'][0]} vs {want['loss'][0]}")
    np.testing.assert_allclose(got["val_loss"], want["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(got["loss"][0], want["loss"][0], rtol=1e-4)
    weights = [keras.saving.load_model(folder / "export" / "model.keras", compile=False)
               .get_weights()
               for folder in (run_dir, single)]
    for trained, expected in zip(*weights, strict=True):
        np.testing.assert_allclose(trained, expected, rtol=0, atol=1e-4)


def wait_for_state(run_dir: Path, step: int, *processes: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not saved_steps(run_dir) or saved_steps(run_dir)[-1] < step:
        assert all(p.poll() is None for p in processes) and time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_submitit_local_two_tasks_train_and_resume_one_run_as_one_process_does(tmp_path,
                                                                               two_epochs):
    """Two tasks of one submitit job train one model; SIGKILLed as a whole in the second
    epoch, the job resumed through the launcher ends where the single process does."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")  # the `cluster` extra
    args, single = two_epochs
    launch = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2"]
    sweep = tmp_path / "sweep"
    job = start(*launch, *args, "strategy=multi_worker", f"strategy.port={free_port_pair()}",
                f"hydra.sweep.dir={sweep}")
    chief = sweep / "0"
    wait_for_state(chief, 16, job)
    os.killpg(job.pid, signal.SIGKILL)  # the launcher, submitit's controller and both tasks
    job.wait()
    killed_at = saved_steps(chief)[-1]
    assert 12 < killed_at < 24
    env = json.loads((chief / "env.json").read_text())
    assert env["strategy"] == {"class": "CollectiveAllReduceStrategy", "num_replicas": 2}
    assert (env["cluster"]["source"], len(env["cluster"]["workers"]), env["cluster"]["index"]) == (
        "submitit", 2, 0)
    assert "M_TRIM_THRESHOLD" in env["cpu_settings"]["set_by_app"]  # a task tunes as a command

    resumed = tmp_path / "resumed"
    output = finish(start(*launch, f"resume={chief}", f"hydra.sweep.dir={resumed}"),
                    timeout=500)
    assert json.loads((chief / "status.json").read_text())["status"] == "completed", output
    assert f"Resumed from {chief}/checkpoints/state/step-" in (chief / "train.log").read_text()
    assert (chief / "export" / "model.keras").is_file()
    assert_same_as_one_process(chief, single)
    # Each job's other task logged beside the run folder and wrote nothing into it.
    for folder in (sweep, resumed):
        assert sorted(p.name for p in (folder / "0_task1").iterdir()) == [".hydra", "train.log"]
        assert "this is worker 1" in (folder / "0_task1" / "train.log").read_text()
    assert sorted(p.name for p in resumed.iterdir()) == [".submitit", "0_task1", "multirun.yaml"]


@pytest.mark.slow
def test_submitit_local_two_tasks_pretrain_each_from_its_own_prepared_shards(
        prepared, tmp_path):  # noqa: F811 (the fixture)
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    output = finish(start("-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                          *prepared_overrides(prepared), "trainer.epochs=1", "logger=none",
                          "strategy=multi_worker", f"strategy.port={free_port_pair()}",
                          f"hydra.sweep.dir={sweep}"), timeout=500)
    chief = sweep / "0"
    assert json.loads((chief / "status.json").read_text())["status"] == "completed", output
    assert json.loads((chief / SOURCE_FILE).read_text())["workers"] == 2
    log = (chief / "train.log").read_text()
    shards = len(open_prepared(prepared, SEQUENCE_LENGTH).shards("train"))
    assert (f"Pretraining on 2 workers, each streaming its own of {shards} prepared shards"
            in log), log[-3000:]
    # An epoch is as many global batches of 16 as both workers' shares fill (pipeline_steps).
    steps = pipeline_steps(open_prepared(prepared, SEQUENCE_LENGTH), 16, 2)
    assert saved_steps(chief)[-1] == steps
    assert (chief / "export" / "model.keras").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("signum, victim", [(signal.SIGKILL, 1), (signal.SIGSTOP, 0)],
                         ids=["SIGKILL-worker1", "SIGSTOP-chief"])
def test_a_lost_worker_stops_the_other_with_one_line_and_a_resumable_run(
        tmp_path, sentiment_dir, signum, victim):
    timeout = 10
    chief = tmp_path / "chief"
    workers, addresses = tf_config_workers(
        [chief, tmp_path / "worker"], *EXACT, "data=tsv", f"data.dir={sentiment_dir}",
        "trainer.epochs=4", "trainer.checkpoint_every_n_steps=4", "strategy=multi_worker",
        f"strategy.timeout_seconds={timeout}")
    wait_for_state(chief, 8, *workers)
    os.kill(workers[victim].pid, signum)
    lost_at = time.monotonic()
    survivor = workers[1 - victim]
    output = finish(survivor, expected=1, timeout=120)
    seconds = time.monotonic() - lost_at
    workers[victim].kill()
    workers[victim].wait()
    print(f"{signal.Signals(signum).name} of worker {victim}: worker {1 - victim} exited "
          f"{seconds:.1f}s later (strategy.timeout_seconds={timeout})")
    assert seconds < timeout + 20
    # A peer killed inside a collective resets its connection at once; a frozen one goes silent.
    reason = ("its connection was reset|no heartbeat" if victim else "no answer")
    (line,) = error_lines(output)
    assert re.fullmatch(
        rf"error: worker {victim} \({re.escape(addresses[victim])}\) of the 2 stopped answering "
        rf"\(({reason})[^)]*\); worker {1 - victim} stopped too\. Resume the run by starting "
        rf"every worker again with `albert-train resume={re.escape(str(chief))}`", line), line
    assert "Traceback" not in output
    assert not [line for line in output.splitlines()
                if line.startswith(("/job:", "RPC:", "The error could be", "\t [[{{"))], output
    status = json.loads((chief / "status.json").read_text())
    if victim:  # the chief survived and wrote it
        assert status["status"] == "interrupted" and "stopped answering" in status["error"]
    assert read_run(chief).state == "interrupted"


@pytest.mark.parametrize("alone", [0, 1])
def test_a_worker_whose_peer_never_starts_stops_naming_it(tmp_path, sentiment_dir, alone):
    port = free_port_pair()
    addresses = [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]
    worker = start(*TINY, "data=tsv", f"data.dir={sentiment_dir}", "strategy=multi_worker",
                   "strategy.start_timeout_seconds=5", f"hydra.run.dir={tmp_path / 'run'}",
                   env={"TF_CONFIG": json.dumps({"cluster": {"worker": addresses},
                                                 "task": {"type": "worker", "index": alone}})})
    output = finish(worker, expected=1, timeout=120)
    missing = f"worker 1 ({addresses[1]})" if alone == 0 else f"the chief ({addresses[0]})"
    assert error_lines(output) == [
        f"error: {missing} did not start within `strategy.start_timeout_seconds`=5s; start every "
        f"worker of the cluster (TF_CONFIG) with the same command"], output[-3000:]


def test_workers_with_different_configs_are_refused_naming_the_keys(tmp_path, sentiment_dir):
    workers, addresses = tf_config_workers(
        [tmp_path / "chief", tmp_path / "worker"], *TINY, "data=tsv",
        f"data.dir={sentiment_dir}", "strategy=multi_worker",
        extra=((), ("seed=7",)))
    for worker in workers:
        output = finish(worker, expected=1)
        assert error_lines(output) == [
            f"error: the workers run different configs: worker 1 ({addresses[1]}) has "
            f"seed=7 (the chief: 42); start every worker with the same "
            f"command and overrides"], output[-3000:]
