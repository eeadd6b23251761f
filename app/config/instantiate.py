"""Safe config instantiation: the one place where a config's `_target_` becomes code.

Hydra 1.3.8 already refuses execution-capable targets (`os.system`, `subprocess.*`, `eval`, ...).
On top of that policy, `instantiate` lets a config build only what a training run needs:

1. every `_target_` in the node (nested nodes and `_args_` included) must name something in a
   module under `ALLOWED_MODULES` (checked on the string, before anything is imported);
2. it is looked up through Hydra's policy-checked discovery (`hydra.utils.get_object` called via
   `hydra.utils.instantiate`), never with a lookup of our own;
3. what it names must be a class: for the node itself a subclass of the base class the call site
   expects (a backbone, an optimizer, a callback), for a nested node one of `NESTED_BASES`
   (learning-rate schedules, initializers, regularizers, constraints);
4. only then does `hydra.utils.instantiate` build it, under Hydra's policy again.

Any refusal, or an error from the constructor, is a ConfigError naming the config key.
"""

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import hydra
import keras
import keras_hub
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf

from app.errors import ConfigError

# Module prefixes a `_target_` may name: the app, Keras, keras-hub, and TensorFlow's optimizers
# and schedules (`tensorflow.keras.*` is Keras 3 itself on this stack).
ALLOWED_MODULES = (
    "app",
    "keras",
    "keras_hub",
    "tensorflow.keras.optimizers",
    "tensorflow.optimizers",
)
# Classes a nested `_target_` node (an argument of the node being built) may name.
NESTED_BASES = (
    keras.optimizers.schedules.LearningRateSchedule,
    keras.initializers.Initializer,
    keras.regularizers.Regularizer,
    keras.constraints.Constraint,
)
TARGET = "_target_"
MAX_MESSAGE = 300  # characters of a Hydra or constructor error kept in a ConfigError


@contextlib.contextmanager
def _quiet_hydra_lookup() -> Iterator[None]:
    """`hydra.utils.get_object` logs an ERROR line before raising; the ConfigError says it all."""
    logger = logging.getLogger("hydra.utils")
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def _under(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(f"{root}.") for root in roots)


def _short(error: BaseException) -> str:
    """Hydra's message on one line, without its hints about bypassing the policy."""
    text = " ".join(line.strip() for line in str(error).splitlines()
                    if line.strip() and not line.strip().startswith("full_key:"))
    for hint in (" It cannot be authorized", " to prevent security", ", set env var"):
        text = text.split(hint)[0]
    return text[:MAX_MESSAGE].rstrip(".") or type(error).__name__


def _plain(node: Any) -> Any:
    """A resolved plain-Python copy, so that what is checked is exactly what Hydra builds."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node


def _resolve(target: str, key: str) -> Any:
    """What `target` names, found through Hydra's policy-checked discovery."""
    with _quiet_hydra_lookup():
        try:
            return hydra.utils.instantiate({TARGET: "hydra.utils.get_object", "path": target})
        except InstantiationException as error:
            if isinstance(error.__cause__, ImportError | AttributeError):
                reason = "no class of that name exists"
            else:
                reason = _short(error)
            raise ConfigError(f"`{key}` refused: {reason}. Received: {target!r}") from None


def check_target(target: Any, key: str, bases: tuple[type, ...]) -> type:
    """Check one `_target_` value against the allow list; return the class it names.

    Args:
        target: the `_target_` value from the config.
        key: its dotted config key, for the error message (e.g. `optimizer._target_`).
        bases: the classes the target must derive from.
    """
    names = " or ".join(base.__name__ for base in bases)
    if not isinstance(target, str) or not _under(target, ALLOWED_MODULES):
        raise ConfigError(
            f"`{key}` refused: expected a subclass of {names} from {', '.join(ALLOWED_MODULES)}. "
            f"Received: {target!r}"
        )
    found = _resolve(target, key)
    if not isinstance(found, type) or not issubclass(found, bases):
        kind = found.__name__ if isinstance(found, type) else type(found).__name__
        raise ConfigError(
            f"`{key}` refused: expected a subclass of {names}, found {kind}. Received: {target!r}"
        )
    if not _under(found.__module__, ALLOWED_MODULES):
        raise ConfigError(
            f"`{key}` refused: {target!r} resolves to {found.__module__}.{found.__qualname__}, "
            f"outside {list(ALLOWED_MODULES)}"
        )
    return found


def _check_tree(node: Any, key: str, bases: tuple[type, ...]) -> None:
    if isinstance(node, Mapping):
        if TARGET in node:
            check_target(node[TARGET], f"{key}.{TARGET}" if key else TARGET, bases)
            if node.get("_partial_"):
                raise ConfigError(f"`{key}._partial_` is not supported: the app needs built "
                                  f"objects, not factories. Received: true")
        for name, value in node.items():
            if name != TARGET:
                _check_tree(value, f"{key}.{name}" if key else str(name), NESTED_BASES)
    elif isinstance(node, Sequence) and not isinstance(node, str | bytes):
        for index, value in enumerate(node):
            _check_tree(value, f"{key}[{index}]", NESTED_BASES)


def check_node(node: Any, key: str, base: type | tuple[type, ...]) -> None:
    """Check every `_target_` of a config node without building anything.

    Args:
        node: a config node (DictConfig or dict) whose own `_target_` must derive from `base`.
        key: the node's dotted config key (e.g. `callbacks.best_checkpoint`).
        base: the class (or classes) the node itself must build.
    """
    bases = base if isinstance(base, tuple) else (base,)
    node = _plain(node)
    if not isinstance(node, Mapping) or TARGET not in node:
        raise ConfigError(f"`{key}` must be a node with a `_target_`. Received: {node!r}")
    _check_tree(node, key, bases)


def instantiate(node: Any, *, key: str, base: type | tuple[type, ...], **kwargs) -> Any:
    """Build a config node with `hydra.utils.instantiate`, after checking all its targets.

    Args:
        node: the config node (DictConfig or dict) with a `_target_`.
        key: its dotted config key, named in errors (e.g. `optimizer`).
        base: the class (or classes) the node must build.
        **kwargs: run-time arguments passed to the constructor (they win over the node's).

    Example:
        >>> optimizer = instantiate(cfg.optimizer, key="optimizer", base=keras.optimizers.Optimizer)
    """
    node = _plain(node)
    kwargs = {name: _plain(value) for name, value in kwargs.items()}
    check_node(node, key, base)
    _check_tree(kwargs, key, NESTED_BASES)
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as error:
        raise ConfigError(f"`{key}` could not be built: {_short(error)}") from error


def check_config(cfg: DictConfig) -> None:
    """Check the targets of every instantiated group of a run config, before any work starts.

    Groups: `model` (an AlbertBackbone or another keras-hub Backbone), `optimizer`, and every
    entry of `callbacks` and `logger` (Keras callbacks).
    """
    check_node(cfg.model, "model", keras_hub.models.Backbone)
    check_node(cfg.optimizer, "optimizer", keras.optimizers.Optimizer)
    for group in ("callbacks", "logger"):
        for name, node in cfg[group].items():
            if node is not None:
                check_node(node, f"{group}.{name}", keras.callbacks.Callback)
