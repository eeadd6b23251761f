"""The ALBERT backbone from config: random init from its shape, or a keras-hub preset."""

import logging

import keras_hub
from omegaconf import DictConfig, OmegaConf

from app.config.instantiate import instantiate
from app.errors import ConfigError
from app.runtime.loading import load_backbone

log = logging.getLogger(__name__)

# Keys of the `model` node that are not AlbertBackbone arguments.
NON_BACKBONE_KEYS = ("preset", "classifier_dropout")


def build_backbone(model: DictConfig, vocabulary_size: int) -> keras_hub.models.AlbertBackbone:
    """An AlbertBackbone: random init from the config's shape, or loaded from `model.preset`."""
    if model.preset is not None:
        log.info("Loading backbone weights from preset %s", model.preset)
        backbone = load_backbone(model.preset)
        if backbone.vocabulary_size != vocabulary_size:
            raise ConfigError(
                f"`model.preset` {model.preset!r} has a vocabulary of {backbone.vocabulary_size}, "
                f"but the tokenizer has {vocabulary_size}"
            )
        return backbone
    args = {k: v for k, v in OmegaConf.to_container(model).items() if k not in NON_BACKBONE_KEYS}
    return instantiate(args, key="model", base=keras_hub.models.Backbone,
                       vocabulary_size=vocabulary_size)
