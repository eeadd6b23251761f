"""A Python API for notebooks: `train`, `evaluate` and `predict`, as the commands do them.

    >>> from app.api import train, evaluate, predict
    >>> result = train(["debug=fast"])        # albert-train debug=fast
    >>> result["run"], result["metrics"]["final"]
    >>> evaluate(result["run"])["metrics"]    # albert-evaluate run=<run>
    >>> predict(result["run"], ["a fine , moving film .", "dull and far too long ."])

Each call composes the same `conf/` as its command (Hydra's compose API, with the same
`key=value` overrides) and runs the function the command runs: `train` claims a new run folder
(`experiments/<name>/<timestamp>/`, with `.hydra/` and `train.log`) and runs Hydra's job in it;
`evaluate` writes `eval_<split>.json`; `predict` returns the rows `albert-predict` writes to a
`.jsonl` output. While a call runs, logging is the command's (Hydra's `hydra.job_logging`:
console lines, and `train.log` in a run folder); afterwards the caller's logging handlers and
Hydra's global state are as before, and each training starts from a fresh Keras session
(`app.training.session.start_session`, as a sweep's jobs do), so calls can be repeated in one
process with the commands' results. User errors raise `app.errors.AppError` (ConfigError,
DataError) with the commands' one-line messages, never `sys.exit`.

Importing this module imports no TensorFlow; it applies the commands' CPU settings
(`app.runtime.cpu.tune_cpu`) when TensorFlow is not imported yet.
"""

import contextlib
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import configure_log, run_job
from hydra.errors import HydraException
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from app.config.schema import SCHEMAS, register_configs
from app.errors import AppError, ConfigError
from app.runtime.console import check_override_keys, config_groups, log_error
from app.runtime.cpu import tune_cpu

__all__ = ["evaluate", "predict", "train"]

if "tensorflow" not in sys.modules:  # oneDNN is chosen when TensorFlow starts
    tune_cpu()
# The command modules (and TensorFlow with them) are imported by the calls that run them.

# Keys of conf/predict.yaml that `predict` reads; the others name files, which it has none of.
PREDICT_KEYS = ("checkpoint", "batch_size", "bucketing")


def train(overrides: Sequence[str] = (), resume: str | Path | None = None) -> dict:
    """Train one run as `albert-train <overrides>` does, into a new run folder.

    Args:
        overrides: `key=value` / `group=option` overrides of `conf/train.yaml`, as on the
            command line (no `-m` sweeps).
        resume: a run folder to continue from its newest checkpoint state, in that folder
            (as `albert-train resume=<run>`).

    Returns:
        `{"run": <the run folder, a Path>, "metrics": <its metrics.json, a dict>}`.

    Example:
        >>> result = train(["debug=fast", "trainer.epochs=2"])
        >>> result["metrics"]["final"]["val_accuracy"]
    """
    overrides = list(overrides)
    if resume is not None:
        overrides.append(f"resume={quoted(resume)}")
    with composed("train", overrides) as cfg:
        cfg.hydra.mode = RunMode.RUN  # as Hydra's run() sets it
        # Hydra's own callbacks class (hydra-core 1.3): instantiates `hydra.callbacks` and
        # calls them as @hydra.main does (the run folder is claimed in on_run_start).
        from hydra._internal.callbacks import Callbacks

        callbacks = Callbacks(cfg)
        try:
            callbacks.on_run_start(config=cfg, config_name="train")
        except SystemExit as refused:  # app.runs.claim refuses with SystemExit("error: ...")
            raise ConfigError(str(refused.code).removeprefix("error: ")) from None
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(),
                               callbacks=callbacks)
        failed: list[Exception] = []

        def task(job_cfg: DictConfig) -> dict:
            try:
                return reported(_train_job)(job_cfg)
            except Exception as error:  # Hydra's job keeps it, as the status FAILED
                failed.append(error)
                raise

        with restored_logging(cfg):
            job = run_job(task_function=task, config=cfg, job_dir_key="hydra.run.dir",
                          job_subdir_key=None, hydra_context=context, configure_logging=True)
            callbacks.on_run_end(config=cfg, config_name="train", job_return=job)
        if failed:  # raised here, not by `job.return_value`, which logs a line of its own
            raise failed[0]
    return {"run": Path(cfg.hydra.runtime.output_dir), "metrics": job.return_value}


def evaluate(run: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Evaluate a finished run as `albert-evaluate run=<run> <overrides>` does.

    Args:
        run: the run folder.
        overrides: keys of `conf/evaluate.yaml`, e.g. `["split=test", "progress=false",
            "data.text_column=review"]`.

    Returns:
        The record written to the run's `eval_<split>.json` (`metrics`, `num_examples`, ...).

    Example:
        >>> evaluate("experiments/debug/2026-01-01_12-00-00")["metrics"]["accuracy"]
    """
    from app.evaluate import evaluate_config

    with composed("evaluate", [*overrides, f"run={quoted(run)}"]) as cfg, job_logging(cfg):
        return reported(evaluate_config)(cfg)


def predict(run: str | Path, texts: Iterable, overrides: Sequence[str] = ()) -> list[dict]:
    """Predictions of a finished run for texts in memory, as `albert-predict` makes them.

    Args:
        run: the run folder.
        texts: a list of strings; of (text, text_pair) pairs for a sentence-pair run; for a
            token-classification run, of raw strings or of token lists.
        overrides: `checkpoint=export|best|last`, `batch_size=<n>`, `bucketing=true|false`.

    Returns:
        One dict per text, the row `albert-predict` writes to a `.jsonl` output: the text
        column(s) and `label` + `probabilities` (classification), `labels` + `probabilities`
        (multi-label), `score` (regression), or `text`, `tokens`, `tags` and `entities` (token
        classification).

    Example:
        >>> predict(run, ["a fine , moving film ."])[0]["label"]
        'positive'
    """
    from app.predict import predict_texts

    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key not in PREDICT_KEYS:
            raise ConfigError(f"`{key}` is not an option of app.api.predict. Received: "
                              f"{override!r}; expected one of {list(PREDICT_KEYS)}")
    with composed("predict", overrides) as cfg, job_logging(cfg):
        return reported(predict_texts)(run, texts, cfg.checkpoint, cfg.batch_size,
                                       cfg.bucketing)


# === Hydra, logging and errors, as the commands have them ===


def quoted(value: str | Path) -> str:
    """`value` as a quoted Hydra override value (a path may hold `,`, `=`, spaces, quotes).

    In Hydra's quoted values a backslash is an escape only before a quote or at the end, and
    `${` starts an interpolation unless escaped.
    """
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", str(value))
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    return f"'{text}'"


@contextlib.contextmanager
def composed(config_name: str, overrides: list[str]) -> Iterator[DictConfig]:
    """`conf/<config_name>.yaml` composed with `overrides` (and the `hydra` node), within an
    initialized Hydra that is cleared on exit.

    A key the command's schema does not have, or an override Hydra cannot apply, is a
    ConfigError (the command would exit with the same message).
    """
    flags = [override for override in overrides if override.startswith("-")]
    if flags:
        raise ConfigError(f"flags are for the command line (a sweep: albert-train -m ...). "
                          f"Received: {flags}; expected key=value overrides")
    register_configs()
    schema = SCHEMAS[config_name]
    check_override_keys(overrides, schema, config_groups(schema))
    with initialize_config_module(config_module="app.conf", version_base="1.3"):
        try:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as error:
            cause = str(error.__cause__ or "").split("\n")[0]  # the value's error, if any
            raise ConfigError(f"{error}: {cause}" if cause else str(error)) from None
        yield cfg


def _logger_names(cfg: DictConfig) -> list[str]:
    """The loggers Hydra's job logging sets: root, those it names, those made verbose."""
    names = ["", *(OmegaConf.select(cfg, "hydra.job_logging.loggers") or {})]
    verbose = cfg.hydra.verbose
    if not isinstance(verbose, bool):
        names += [verbose] if isinstance(verbose, str) else list(verbose)
    return names


@contextlib.contextmanager
def restored_logging(cfg: DictConfig) -> Iterator[None]:
    """Give the loggers Hydra's job logging configures back as they were (handlers, level,
    propagation) on exit, closing the handlers it made (`train.log` among them): a notebook
    keeps its own logging, and no handler is left behind for the next call."""
    saved = {}
    for name in _logger_names(cfg):
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
    try:
        yield
    finally:
        for name, (handlers, level, propagate, disabled) in saved.items():
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled


@contextlib.contextmanager
def job_logging(cfg: DictConfig) -> Iterator[None]:
    """The command's logging (`hydra.job_logging` of `cfg`) while the block runs."""
    with restored_logging(cfg):
        configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)
        yield


def reported(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, logging a user error as the command does (one line; the traceback to the log
    file only) before it is raised."""

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AppError as error:
            log_error(error)
            raise

    return call


def _train_job(cfg: DictConfig) -> dict:
    """`app.train.train_job`, imported when a training starts."""
    from app.train import train_job

    return train_job(cfg)
