"""Loggers as a list (`logger=[tensorboard,csv,mlflow]`): a CSV row per epoch, and MLflow runs
read back with the real MlflowClient (params, metric history, final metrics, tags, artifacts),
continued by a resume, skipped with one warning when the server is unreachable, one experiment
per sweep. Bad logger names and a missing MLflow are one error line."""

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from conftest import TINY, compose_config, run_command, write_splits
from test_resume import finish, saved_steps, start, wait_for_step

from app.data import synthetic
from app.errors import PREEMPTED_EXIT_CODE
from app.train import main, train
from app.training.resume import resumed_config

REPO = Path(__file__).resolve().parents[1]
# Two epochs of 4 batches: a few seconds of training after TensorFlow has started.
SMALL = [*TINY, "data=tsv", "data.max_train_examples=64", "data.max_eval_examples=16"]
ALL_LOGGERS = "logger=[tensorboard,csv,mlflow]"
needs_mlflow = pytest.mark.skipif(find_spec("mlflow") is None,
                                  reason='needs pip install -e ".[mlflow]"')


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_splits(tmp_path_factory.mktemp("loggers-data"), ("sentence", "label"),
                        synthetic.sentiment_rows, 64, seed=1)


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def run_tiny(run_dir: Path, data_dir: Path, uri: str, *overrides: str) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = compose_config(*SMALL, f"data.dir={data_dir}", *overrides)
        return train(cfg, run_dir)


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def only_run(uri: str, experiment: str):
    """The one MLflow run of `experiment` (there must be exactly one)."""
    client = mlflow_client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def csv_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "history.csv").open() as rows:
        return list(csv.DictReader(rows))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, data_dir) -> tuple[Path, str, dict]:
    """A run with every logger: (its folder, the MLflow store, its metrics)."""
    root = tmp_path_factory.mktemp("tracked")
    uri = sqlite_uri(root)
    metrics = run_tiny(root / "run", data_dir, uri, ALL_LOGGERS, "name=tracked")
    return root / "run", uri, metrics


@needs_mlflow
def test_csv_has_one_row_per_epoch_with_the_evaluation(tracked):
    run_dir, _, metrics = tracked
    rows = csv_rows(run_dir)
    assert [row["epoch"] for row in rows] == ["0", "1"]
    for name, values in metrics["history"].items():
        assert [float(row[name]) for row in rows] == pytest.approx(values), name
    assert {"val_loss", "val_accuracy", "loss"} <= set(rows[0])


@needs_mlflow
def test_mlflow_run_holds_params_metrics_tags_and_artifacts(tracked):
    run_dir, uri, metrics = tracked
    run = only_run(uri, "tracked")
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    saved = json.loads((run_dir / "mlflow_run.json").read_text())
    assert (saved["run_id"], saved["tracking_uri"]) == (run.info.run_id, uri)

    params = run.data.params
    assert params["model.num_layers"] == "2" and params["trainer.batch_size"] == "16"
    assert params["logger.mlflow._target_"] == "app.runs.loggers.MlflowLogger"
    assert float(params["optimizer.learning_rate"]) > 0

    client = mlflow_client(uri)
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1]
    assert [m.value for m in history] == pytest.approx(metrics["history"]["val_loss"])
    for name, value in metrics["final"].items():
        assert run.data.metrics[f"final/{name}"] == pytest.approx(value)

    env = json.loads((run_dir / "env.json").read_text())
    assert run.data.tags["run_folder"] == str(run_dir.resolve())
    assert run.data.tags["mlflow.source.git.commit"] == env["git"]["commit"]
    assert run.data.tags["host"]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "metrics.json", "export"}  # no .hydra/ without Hydra
    exported = {a.path for a in client.list_artifacts(run.info.run_id, "export")}
    assert {"export/model.keras", "export/preset"} <= exported
    local = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(run_dir.parent)))
    assert json.loads(local.read_text()) == json.loads((run_dir / "metrics.json").read_text())


@needs_mlflow
def test_resume_continues_the_same_mlflow_run_and_csv(tmp_path, data_dir):
    run_dir, uri = tmp_path / "run", sqlite_uri(tmp_path)
    run_tiny(run_dir, data_dir, uri, "logger=[csv,mlflow]", "name=resumed")
    first = only_run(uri, "resumed")
    # As if preempted after the first epoch's state: its second epoch runs again.
    steps_per_epoch = saved_steps(run_dir)[-1] // 2
    for step in saved_steps(run_dir):
        if step > steps_per_epoch:
            shutil.rmtree(run_dir / f"checkpoints/state/step-{step:09d}")
    (run_dir / "status.json").write_text(json.dumps({"status": "preempted"}))

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(tmp_path / "elsewhere"))  # not used
        train(resumed_config(str(run_dir)), run_dir)
    run = only_run(uri, "resumed")
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    steps = [m.step for m in mlflow_client(uri).get_metric_history(run.info.run_id, "val_loss")]
    assert steps == [0, 1, 1]  # the second epoch, logged again by the resumed process
    assert not (tmp_path / "elsewhere").exists()
    assert [row["epoch"] for row in csv_rows(run_dir)] == ["0", "1"]  # no duplicate row


@needs_mlflow
def test_unreachable_tracking_server_is_one_warning(tmp_path, data_dir, caplog):
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="app.runs.loggers"):
        metrics = run_tiny(run_dir, data_dir, "http://127.0.0.1:9", "logger=[csv,mlflow]",
                           "trainer.epochs=1")
    warnings = [r for r in caplog.records if r.name == "app.runs.loggers"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "http://127.0.0.1:9 is unreachable" in warnings[0].getMessage()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert metrics["final"] and len(csv_rows(run_dir)) == 1
    assert not (run_dir / "mlflow_run.json").exists()


def test_unknown_logger_is_one_line_naming_the_options(monkeypatch):
    code = run_command(monkeypatch, main, "logger=[tensorboard,foo]")
    assert code == ("error: unknown option `foo` for config group `logger`. Received: "
                    "'logger=[tensorboard,foo]'; expected one of ['csv', 'mlflow', 'none', "
                    "'tensorboard']")


def test_mlflow_not_installed_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setattr("app.config.validate.find_spec", lambda name: None)
    code = run_command(monkeypatch, main, "logger=mlflow", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == ('error: `logger=mlflow` needs MLflow, which is not installed: '
                    'pip install "albert-trainer[mlflow]"')


def test_mlflow_is_imported_only_by_its_logger():
    script = "import sys, app.train; assert 'mlflow' not in sys.modules, 'mlflow imported'"
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=300)


@needs_mlflow
@pytest.mark.slow
def test_sweep_is_one_experiment_with_a_run_per_job(tmp_path, data_dir):
    sweep, uri = tmp_path / "grid", sqlite_uri(tmp_path)
    command = [sys.executable, "-m", "app", "-m", *SMALL, "trainer.epochs=1", "name=swept",
               f"data.dir={data_dir}", "logger=[csv,mlflow]",
               "optimizer.learning_rate=1e-3,3e-3", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_TRACKING_URI": uri}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    client = mlflow_client(uri)
    (experiment,) = client.search_experiments(filter_string="name != 'Default'")
    assert experiment.name == str(sweep)  # outside paths.output_dir: the absolute folder
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.run_name"])
    assert [run.info.run_name for run in runs] == ["0", "1"]
    assert [float(run.data.params["optimizer.learning_rate"]) for run in runs] == [1e-3, 3e-3]
    assert all(run.data.params["logger"] == "[csv,mlflow]" for run in runs)
    assert all(run.data.tags["sweep"] == str(sweep) for run in runs)
    assert all(run.info.status == "FINISHED" for run in runs)


@needs_mlflow
@pytest.mark.slow
def test_preempted_run_is_killed_in_mlflow_then_resumed_to_finished(tmp_path, monkeypatch):
    data_dir = write_splits(tmp_path / "data", ("sentence", "label"), synthetic.sentiment_rows,
                            400, seed=11)
    run_dir, uri = tmp_path / "run", sqlite_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    process = start(*TINY, "data=tsv", f"data.dir={data_dir}", "data.max_eval_examples=16",
                    "trainer.checkpoint_every_n_steps=4", "logger=mlflow", "name=preempted",
                    f"hydra.run.dir={run_dir}")
    wait_for_step(process, run_dir, 4)
    process.send_signal(signal.SIGTERM)
    finish(process, expected=PREEMPTED_EXIT_CODE)
    assert only_run(uri, "preempted").info.status == "KILLED"
    finish(start(f"resume={run_dir}"))
    run = only_run(uri, "preempted")
    assert run.info.status == "FINISHED" and "final/val_accuracy" in run.data.metrics
