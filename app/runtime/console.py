"""How every command meets the terminal: one `@hydra.main` entry with the same policy.

- Overrides are checked against the command's schema before Hydra composes, so an unknown key
  is refused with the keys it could have been (Hydra's own message names neither).
- A user error (AppError) ends as one line on stderr, `error: ...`, exit code 1; its traceback
  goes to the log file only (`HYDRA_FULL_ERROR=1` shows it on the terminal too).
- In a multirun a failed job does not stop the sweep (see `sweep_policy`).
"""

import dataclasses
import logging
import math
import os
import sys
import typing
from collections.abc import Callable
from importlib import resources
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from app.config.schema import SCHEMAS, TrainConfig, register_configs
from app.errors import PREEMPTED_EXIT_CODE, AppError, ConfigError, Preempted

log = logging.getLogger(__name__)

CONFIG_PATH = "pkg://app.conf"  # conf/ of the repository, shipped inside the package


class ConsoleHandler(logging.StreamHandler):
    """Log lines to whatever `sys.stdout` / `sys.stderr` is when each is written.

    A plain StreamHandler keeps the stream it was configured with, which a caller that swaps
    the stream (pytest, a notebook) may close while the handler lives on.

    Args:
        to: `stdout` or `stderr`.
    """

    def __init__(self, to: str = "stderr", **stream):  # Hydra's `stream` is not kept
        logging.Handler.__init__(self)
        self.to = to

    @property
    def stream(self):
        return getattr(sys, self.to)


def config_groups(schema: type) -> list[str]:
    """The config groups a command composes: those of conf/ (`model`, `data`, `experiment`,
    ...) for training configs, none for the others."""
    if not issubclass(schema, TrainConfig):
        return []
    return sorted(entry.name for entry in resources.files("app.conf").iterdir()
                  if entry.is_dir() and entry.name not in ("__pycache__", "hydra", "schema"))


def _fields(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def check_override_keys(overrides: list[str], schema: type, groups: list[str]) -> None:
    """Refuse an override whose key the schema does not have, naming the allowed keys.

    Args:
        overrides: command-line arguments; `key=value` ones are checked (`hydra.*` and
            `--flags` are Hydra's own).
        schema: the command's structured-config dataclass.
        groups: config group names that are valid top-level keys too.
    """
    for override in overrides:
        if override.startswith("-") or "=" not in override:
            continue
        key = override.split("=", 1)[0].lstrip("+~")
        top = key.split(".")[0].split("/")[0]
        if top == "hydra":
            continue
        node, path = schema, []
        for part in key.split("."):
            allowed = _fields(node)
            if not path:
                allowed = {**{group: Any for group in groups}, **allowed}
            if part not in allowed:
                where = f"`{'.'.join(path)}`" if path else "this command"
                raise ConfigError(f"unknown key `{key}` for {where}. Received: {override!r}; "
                                  f"expected one of {sorted(allowed)}")
            path.append(part)
            node = allowed[part]
            if not dataclasses.is_dataclass(node):
                break


def log_error(error: AppError) -> None:
    """Log a user error as one line, and its traceback to the `app.traceback` logger (which
    Hydra's job logging sends to the log file only)."""
    log.error("%s", error)
    logging.getLogger("app.traceback").debug("Traceback of the error above", exc_info=error)


def group_options(group: str) -> list[str]:
    """The options of a config group: the names of conf/<group>/*.yaml."""
    return sorted(entry.name.removesuffix(".yaml")
                  for entry in resources.files("app.conf").joinpath(group).iterdir()
                  if entry.name.endswith(".yaml"))


def check_group_options(overrides: list[str], groups: list[str]) -> None:
    """Refuse a config group option that conf/ lacks (`logger=[tensorboard,foo]`), naming the
    group's options: Hydra's message spans lines, and for a list of options names none.

    Args:
        overrides: command-line arguments; `group=...` ones of `groups` are checked (an
            option, a list of them, or a sweep's choices).
        groups: the command's config groups.
    """
    parser = OverridesParser.create()
    for text in overrides:
        if text.startswith("-") or "=" not in text:
            continue
        try:
            override = parser.parse_override(text)
        except OverrideParseException:
            continue  # Hydra says what it cannot parse
        value = override.value()
        if override.key_or_group not in groups or (
                override.is_sweep_override() and not isinstance(value, ChoiceSweep)):
            continue
        values = value.list if isinstance(value, ChoiceSweep) else [value]
        names = [name for item in values for name in (item if isinstance(item, list) else [item])]
        options = group_options(override.key_or_group)
        unknown = [str(name) for name in names if name is not None and str(name) not in options]
        if unknown:
            raise ConfigError(f"unknown option `{unknown[0]}` for config group "
                              f"`{override.key_or_group}`. Received: {text!r}; expected one "
                              f"of {options}")


def _fail(error: AppError) -> None:
    """One line on the terminal; the traceback only in the log file (unless HYDRA_FULL_ERROR)."""
    log_error(error)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    sys.exit(f"error: {error}")


def command(config_name: str) -> Callable[[Callable], Callable[[], Any]]:
    """Turn `fn(cfg)` into a console-script entry point composing `conf/<config_name>.yaml`,
    typed by its schema (`SCHEMAS[config_name]`).

    Example:
        >>> @command("evaluate")
        ... def main(cfg): ...
    """
    schema = SCHEMAS[config_name]

    def wrap(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        def guarded(cfg: DictConfig) -> Any:
            try:
                missing = [key for key in cfg if OmegaConf.is_missing(cfg, key)]
                if missing:
                    raise ConfigError(f"`{missing[0]}` is required. Received: "
                                      f"{sys.argv[1:]}; expected {missing[0]}=<value>")
                return fn(cfg)
            except AppError as error:
                _fail(error)

        app = hydra.main(version_base="1.3", config_path=CONFIG_PATH,
                         config_name=config_name)(guarded)

        def main() -> Any:
            register_configs()
            try:
                check_override_keys(sys.argv[1:], schema, config_groups(schema))
                check_group_options(sys.argv[1:], config_groups(schema))
            except ConfigError as error:
                sys.exit(f"error: {error}")
            return app()

        main.__doc__ = fn.__doc__
        return main

    return wrap


def sweep_policy(job: Callable[[], float]) -> float:
    """Run one training job under the failure policy of a single run or a sweep.

    A preempted run exits with PREEMPTED_EXIT_CODE. In a multirun a failed job does not stop
    the process: its folder's status.json says `failed` with the error and the sweep goes on.
    The job returns NaN to Hydra's basic sweeper; under the Optuna sweeper it raises, which
    Optuna records as a failed trial (a NaN return would crash hydra-optuna-sweeper 1.3.0,
    which then tells Optuna FAIL *with* the value). Outside a sweep a user error is one line.
    """
    hydra_cfg = HydraConfig.get()
    try:
        return job()
    except Preempted as stop:
        log.warning("Stopped after step %d with a checkpoint; resume with resume=%s",
                    stop.step, hydra_cfg.runtime.output_dir)
        sys.exit(PREEMPTED_EXIT_CODE)
    except Exception as error:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        log.error("Job failed, the sweep goes on: %s", error,
                  exc_info=not isinstance(error, AppError))
        if "optuna" in str(hydra_cfg.sweeper.get("_target_", "")):
            # Not an AppError: `command` would turn that into an exit that ends the sweep.
            raise RuntimeError(f"{type(error).__name__}: {error}") from error
        return math.nan


def command_line_keys() -> set[str]:
    """The config keys set on this command's command line (none outside a Hydra command)."""
    if not HydraConfig.initialized():
        return set()
    return {override.split("=", 1)[0].lstrip("+~")
            for override in HydraConfig.get().overrides.task if "=" in override}
