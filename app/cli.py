"""`key=value` arguments of the run tools (report, evaluate, predict) and their error exit."""

import logging
import sys
from collections.abc import Callable

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from app.errors import AppError, ConfigError


def parse_args(argv: list[str], defaults: dict, required: tuple[str, ...] = ()) -> dict:
    """Parse `key=value` arguments over `defaults`; values are typed as YAML (`null` is None).

    Keys outside `defaults` are refused, naming the allowed keys.

    Example:
        >>> parse_args(["run=exp/1", "batch_size=64"], {"run": None, "batch_size": 32})
        {'run': 'exp/1', 'batch_size': 64}
    """
    args = dict(defaults)
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if not sep:
            raise ConfigError(f"arguments are key=value. Received: {arg!r}; expected one of "
                              f"{[f'{k}=...' for k in defaults]}")
        if key not in defaults:
            raise ConfigError(f"unknown argument {key!r}. Received: {arg!r}; expected one of "
                              f"{list(defaults)}")
        try:
            args[key] = OmegaConf.from_dotlist([f"value={raw}"])["value"]
        except OmegaConfBaseException as error:
            raise ConfigError(f"cannot parse {arg!r}: {error}") from error
    for key in required:
        if args[key] is None:
            raise ConfigError(f"`{key}` is required. Received: {list(argv)}; "
                              f"expected {key}=<value>")
    return args


def run_tool(main: Callable[[list[str]], None]) -> None:
    """Run a tool's `main(argv)`: log to stderr, and exit with the message on a user error."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - "
                        "%(message)s", stream=sys.stderr)
    try:
        main(sys.argv[1:])
    except AppError as error:
        sys.exit(f"error: {error}")
