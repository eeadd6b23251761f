"""Loggers besides TensorBoard: a CSV row per epoch (`logger=csv`) and MLflow (`logger=mlflow`).

MLflow is optional (`pip install "albert-trainer[mlflow]"`) and imported only when its logger
starts. Tracking never stops a run: an MLflow error (an unreachable server, a locked database)
is one warning, then the run goes on without it; its metrics are in the run folder anyway.

Example:
    >>> albert-train "logger=[tensorboard,csv,mlflow]"
"""

import atexit
import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import keras
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from app.runs.layout import RunLayout
from app.runs.record import write_json
from app.runtime.cluster import is_chief

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlflow.db"  # in paths.output_dir, where $MLFLOW_TRACKING_URI is not set
ARTIFACTS_DIR = "mlartifacts"  # beside a SQLite store: an experiment's artifacts
CONNECT_SECONDS = 5.0  # to find a tracking server unreachable once, at the start
# MLflow's HTTP defaults (7 retries, 120 s timeouts) would stall a run for minutes when its
# server hangs mid-run (with these: 35 s, measured); set while this logger calls MLflow, unless
# the user set them.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow's status of a run by what the run folder's status.json says when the process exits.
END_STATUS = {"completed": "FINISHED", "preempted": "KILLED", "interrupted": "KILLED"}


class EpochCsv(keras.callbacks.CSVLogger):
    """Keras' CSVLogger into the run's `history.csv`, appending, so that a resumed run continues
    the same file.

    Keras appends an epoch that runs again (after a resume from a state before its end, or a
    rollback) a second time: the rows of that epoch and later ones are dropped first.

    Args:
        run_dir: the run folder.
        separator: between the values of a row.
    """

    def __init__(self, run_dir: str, separator: str = ","):
        super().__init__(RunLayout(Path(run_dir)).history_csv, separator=separator, append=True)

    def on_epoch_begin(self, epoch, logs=None):
        path = Path(self.filename)
        if not path.is_file():
            return
        lines = path.read_bytes().splitlines(keepends=True)
        kept = lines[:1]  # the header
        for line in lines[1:]:
            if not line.endswith(b"\n") or int(line.split(self.sep.encode(), 1)[0]) >= epoch:
                break
            kept.append(line)
        if len(kept) < len(lines):
            os.truncate(path, sum(map(len, kept)))  # Keras' handle appends at the new end


class MlflowLogger(keras.callbacks.Callback):
    """One MLflow run per training run: the config as params, each epoch's logs as metrics
    (step = epoch), and at the run's end the final metrics and artifacts (see `log_finished_run`).

    The run's id and store are kept in its folder (`mlflow_run.json`), so that `resume=` continues
    the same MLflow run. Jobs of a sweep are runs of one experiment named after the sweep folder.
    Only the chief process of a multi-worker run logs.

    Args:
        run_dir: the run folder.
        experiment: the MLflow experiment; null: the run's `name`, or for the jobs of a sweep the
            sweep folder (relative to `paths.output_dir`).
        tracking_uri: null: `$MLFLOW_TRACKING_URI`, else `sqlite:///<paths.output_dir>/mlflow.db`.
    """

    def __init__(self, run_dir: str, experiment: str | None = None,
                 tracking_uri: str | None = None):
        super().__init__()
        self.layout = RunLayout(Path(run_dir))
        self.experiment = experiment
        self.tracking_uri = tracking_uri
        self.active = is_chief()
        self.client = self.run_id = None

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Run MLflow calls; on an error warn once and log nothing more."""
        try:
            with _http_limits():
                yield
        except Exception as error:
            self.active = False
            atexit.unregister(self._end_unfinished)
            message = " ".join(str(error).split())[:300]
            log.warning("MLflow logging stopped (%s: %s: %s); the run goes on, its metrics are "
                        "in %s", what, type(error).__name__, message, self.layout.root)

    def on_train_begin(self, logs=None):
        if self.active and self.run_id is None:
            with self._guard("starting the MLflow run"):
                self._start()

    def _start(self) -> None:
        from mlflow.tracking import MlflowClient

        config = OmegaConf.to_container(OmegaConf.load(self.layout.run_config))
        saved = (json.loads(self.layout.mlflow_run.read_text())
                 if self.layout.mlflow_run.is_file() else None)
        output_dir = Path(config["paths"]["output_dir"]).resolve()
        uri = saved["tracking_uri"] if saved else (
            self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{output_dir / DEFAULT_STORE}")
        check_reachable(uri)
        client = MlflowClient(uri)
        sweep_dir, overrides = _hydra_job()
        if saved:
            run_id = saved["run_id"]
            client.update_run(run_id, status="RUNNING")
            log.info("Continuing MLflow run %s in %s", run_id, uri)
        else:
            name = self.experiment or _experiment_name(config["name"], sweep_dir, output_dir)
            experiment_id = _experiment_id(client, name, _artifact_location(uri, name))
            run_id = client.create_run(experiment_id, run_name=self.layout.root.name).info.run_id
            client.log_batch(run_id, params=_params(config, overrides))
            write_json(self.layout.mlflow_run, {"run_id": run_id, "tracking_uri": uri,
                                                "experiment_id": experiment_id})
            log.info("MLflow run %s of experiment %r in %s", run_id, name, uri)
        client.log_batch(run_id, tags=self._tags(sweep_dir))
        self.client, self.run_id = client, run_id
        atexit.register(self._end_unfinished)

    def _tags(self, sweep_dir: Path | None) -> list:
        from mlflow.entities import RunTag

        env_file = self.layout.env()
        git = json.loads(env_file.read_text()).get("git", {}) if env_file.is_file() else {}
        tags = {"run_folder": str(self.layout.root.resolve()), "host": socket.gethostname(),
                "mlflow.source.git.commit": git.get("commit"), "git.dirty": git.get("dirty"),
                "sweep": sweep_dir}
        return [RunTag(key, str(value)) for key, value in tags.items() if value is not None]

    def on_epoch_end(self, epoch, logs=None):
        if self.active and self.run_id:
            with self._guard(f"logging epoch {epoch + 1}"):
                self.client.log_batch(self.run_id, metrics=_metrics(logs or {}, epoch))

    def on_run_end(self) -> None:
        """Log the final metrics (metrics.json's `final`, step = the epoch they come from), the
        configs (.hydra/config.yaml as composed, config.yaml resolved), metrics.json and export/
        as artifacts, and end the MLflow run."""
        if not (self.active and self.run_id):
            return
        with self._guard("logging the run's end"):
            metrics = json.loads(self.layout.metrics.read_text())
            final = {f"final/{name}": value for name, value in metrics["final"].items()}
            self.client.log_batch(self.run_id,
                                  metrics=_metrics(final, metrics["final_epoch"] - 1))
            for path in (self.layout.hydra_config, self.layout.run_config, self.layout.metrics):
                if path.is_file():  # .hydra/ only where Hydra ran the job
                    folder = path.parent.relative_to(self.layout.root).as_posix()
                    self.client.log_artifact(self.run_id, str(path),
                                             None if folder == "." else folder)
            if self.layout.export.is_dir():
                self.client.log_artifacts(self.run_id, str(self.layout.export),
                                          self.layout.export.name)
            self.client.set_terminated(self.run_id, "FINISHED")
            atexit.unregister(self._end_unfinished)

    def _end_unfinished(self) -> None:
        """At exit, end an MLflow run left open by a failed or preempted run (KILLED when
        preempted: `resume=` sets it running again)."""
        with contextlib.suppress(Exception), _http_limits():
            status = json.loads(self.layout.status.read_text()).get("status")
            self.client.set_terminated(self.run_id, END_STATUS.get(status, "FAILED"))


def log_finished_run(callbacks: list) -> None:
    """Tell the MLflow loggers among `callbacks` that the run folder is complete (metrics.json
    and export/ written)."""
    for callback in callbacks:
        if isinstance(callback, MlflowLogger):
            callback.on_run_end()


def check_reachable(uri: str) -> None:
    """Raise OSError when `uri` is an HTTP tracking server that does not accept a connection
    (MLflow itself would retry for minutes)."""
    url = urlparse(uri)
    if url.scheme not in ("http", "https"):
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise OSError(f"the tracking server {uri} is unreachable: {error}") from error


@contextlib.contextmanager
def _http_limits() -> Iterator[None]:
    """HTTP_LIMITS set, and urllib3's line per retry kept off the log (the guard's warning
    says what failed)."""
    added = {name: value for name, value in HTTP_LIMITS.items() if name not in os.environ}
    os.environ.update(added)
    retries = logging.getLogger("urllib3.connectionpool")
    level = retries.level
    retries.setLevel(logging.ERROR)
    try:
        yield
    finally:
        retries.setLevel(level)
        for name in added:
            os.environ.pop(name, None)


def _hydra_job() -> tuple[Path | None, list[str]]:
    """This job's sweep folder (None outside a multirun) and command-line overrides."""
    if not HydraConfig.initialized():
        return None, []
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    return (Path(hydra_cfg.sweep.dir).resolve() if multirun else None,
            list(hydra_cfg.overrides.task))


def _experiment_name(name: str, sweep_dir: Path | None, output_dir: Path) -> str:
    if sweep_dir is None:
        return name
    return str(sweep_dir.relative_to(output_dir) if sweep_dir.is_relative_to(output_dir)
               else sweep_dir)


def _artifact_location(uri: str, experiment: str) -> str | None:
    """A new experiment's artifact folder in a local SQLite store: beside the database (MLflow
    would use ./mlruns of the working directory). None elsewhere: the server decides."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///")).resolve()
    database.parent.mkdir(parents=True, exist_ok=True)
    return (database.parent / ARTIFACTS_DIR / re.sub(r"[^\w.-]+", "_", experiment)).as_uri()


def _experiment_id(client, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created when new (a parallel job of the sweep may create it too)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    return found.experiment_id


def _flatten(node: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _params(config: dict, overrides: list[str]) -> list:
    """The config flattened to dotted keys, and the command-line overrides whose key it lacks
    (group choices such as `model=albert_small`), each value cut to MLflow's limit (the client
    splits them into batches of its size)."""
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    params = _flatten(config)
    for override in overrides:
        if "=" in override:
            key, value = override.split("=", 1)
            params.setdefault(key.lstrip("+~"), value)
    return [Param(key, value[:MAX_PARAM_VAL_LENGTH]) for key, value in params.items()]


def _metrics(values: dict, step: int) -> list:
    """MLflow metrics of the numeric values, at `step`."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for name, value in values.items():
        with contextlib.suppress(TypeError, ValueError):
            metrics.append(Metric(name, float(value), now, step))
    return metrics
