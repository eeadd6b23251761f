"""The ALBERT backbone from config: random init from its shape, or a checkpoint (`model.preset`)."""

import logging

import keras_hub
from omegaconf import DictConfig, OmegaConf

from app.config.instantiate import instantiate
from app.errors import ConfigError
from app.models.albert_backbone import (
    DEFAULT_ACTIVATION,
    AlbertActivationBackbone,
    activation_of,
    check_activation,
)
from app.runtime.console import command_line_keys
from app.runtime.loading import load_backbone, load_heads, preset_positions

log = logging.getLogger(__name__)

# Keys of the `model` node that are not AlbertBackbone arguments.
NON_BACKBONE_KEYS = ("preset", "tokenizer", "classifier_dropout", "learning_rate",
                     "preset_learning_rate", "lora_rank")
KERAS_HUB_TARGET = "keras_hub.models.AlbertBackbone"
APP_TARGET = f"{AlbertActivationBackbone.__module__}.{AlbertActivationBackbone.__name__}"
# Keys that fix the shape of the weights: a preset's own values win, a differing one set on the
# command line is an error.
ARCHITECTURE_KEYS = ("num_layers", "num_heads", "num_groups", "num_inner_repetitions",
                     "embedding_dim", "hidden_dim", "intermediate_dim")


def build_backbone(model: DictConfig, vocabulary_size: int) -> keras_hub.models.AlbertBackbone:
    """An AlbertBackbone: random init from the config's shape, or loaded from `model.preset`.

    On a preset, `model.dropout` applies and `model.max_sequence_length` may shorten the
    position table (never lengthen it); the preset's shape and activation stay.
    """
    if model.preset is None:
        return instantiate(random_init_args(model), key="model", base=keras_hub.models.Backbone,
                           vocabulary_size=vocabulary_size)
    log.info("Loading backbone weights from preset %s", model.preset)
    backbone = load_backbone(model.preset)
    if backbone.vocabulary_size != vocabulary_size:
        raise ConfigError(
            f"`model.preset` {model.preset!r} has a vocabulary of {backbone.vocabulary_size}, "
            f"but the tokenizer has {vocabulary_size}"
        )
    preset = {**backbone.get_config(), "activation": activation_of(backbone)}
    wanted = {"activation": DEFAULT_ACTIVATION, **model}  # runs of 0.1 had no activation
    explicit = command_line_keys()
    for key in (*ARCHITECTURE_KEYS, "activation", "max_sequence_length"):
        fits = (wanted[key] <= preset[key] if key == "max_sequence_length"
                else wanted[key] == preset[key])
        if f"model.{key}" in explicit and not fits:
            raise ConfigError(
                f"`model.{key}` would change the architecture of `model.preset` "
                f"{model.preset!r}: the preset has {key}={preset[key]}, received {wanted[key]}; "
                f"drop the override (only dropout, classifier_dropout and a shorter "
                f"max_sequence_length apply on top of a preset)")
    if preset["activation"] != wanted["activation"]:
        log.info("Activation %s from preset %s", preset["activation"], model.preset)
    return with_overrides(backbone, dropout=model.dropout,
                          max_sequence_length=min(model.max_sequence_length,
                                                  preset["max_sequence_length"]))


def random_init_args(model: DictConfig) -> dict:
    """The `model` node as backbone arguments: keras-hub's AlbertBackbone for its own tanh GELU
    (so the run's presets load with keras-hub alone), the app's for another activation."""
    args = {k: v for k, v in OmegaConf.to_container(model).items() if k not in NON_BACKBONE_KEYS}
    activation = check_activation(args.pop("activation", DEFAULT_ACTIVATION))
    if args.get("_target_") == APP_TARGET:
        return {**args, "activation": activation}
    if activation == DEFAULT_ACTIVATION:
        return args
    if args.get("_target_") != KERAS_HUB_TARGET:
        raise ConfigError(f"`model.activation` {activation!r} needs `model._target_` "
                          f"{KERAS_HUB_TARGET} or {APP_TARGET}. "
                          f"Received: {args.get('_target_')!r}")
    return {**args, "_target_": APP_TARGET, "activation": activation}


def with_overrides(backbone: keras_hub.models.AlbertBackbone, **overrides):
    """The backbone with other dropout or a shorter position table, weights and class kept."""
    config = backbone.get_config()
    changed = {k: v for k, v in overrides.items() if config[k] != v}
    if not changed:
        return backbone
    log.info("Preset overrides: %s", ", ".join(f"{k}={v}" for k, v in changed.items()))
    rebuilt = type(backbone).from_config({**config, **changed})
    for old, new in zip(backbone.weights, rebuilt.weights, strict=True):
        rows = new.shape[0] if new.shape else None
        new.assign(old if old.shape == new.shape else old[:rows])
    return rebuilt


def load_preset_heads(task_model, model: DictConfig) -> None:
    """Load the heads a transformers `model.preset` holds for `task_model` (same shapes)."""
    if model.preset is not None:
        loaded = load_heads(task_model, model.preset)
        if loaded:
            log.info("Loaded the heads %s from preset %s", loaded, model.preset)


def position_table(model: DictConfig) -> int:
    """The longest sequence the run's backbone will take, before it is built:
    `model.max_sequence_length`, or the preset's position table when that is shorter."""
    if model.preset is None:
        return model.max_sequence_length
    return min(model.max_sequence_length, preset_positions(model.preset))


def check_sequence_length(backbone, sequence_length: int) -> None:
    """A ConfigError when `data.sequence_length` exceeds the backbone's position table."""
    if sequence_length > backbone.max_sequence_length:
        raise ConfigError(
            f"`data.sequence_length` must be <= the model's max_sequence_length "
            f"({backbone.max_sequence_length}, from `model.preset`). Received: {sequence_length}")
