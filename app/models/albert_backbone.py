"""keras-hub's AlbertBackbone with the feed-forward activation as a config argument.

keras-hub's AlbertBackbone hard-codes the tanh GELU in its TransformerEncoder layers
(keras_hub/src/models/albert/albert_backbone.py), while several Chinese ALBERTs use relu and
some checkpoints the exact GELU. The activation goes by transformers' `hidden_act` names and is
in `get_config`, so presets, `.keras` files and SavedModels rebuild it.
"""

import keras
import keras_hub

from app.errors import ConfigError

DEFAULT_ACTIVATION = "gelu_new"  # keras-hub's own: the tanh GELU


def gelu_tanh(x):
    """The tanh-approximated GELU (transformers' `gelu_new`, keras-hub's ALBERT)."""
    return keras.activations.gelu(x, approximate=True)


def gelu_exact(x):
    """The exact (erf) GELU (transformers' `gelu`)."""
    return keras.activations.gelu(x, approximate=False)


ACTIVATIONS = {"gelu_new": gelu_tanh, "gelu": gelu_exact, "relu": keras.activations.relu}


def check_activation(activation: str, key: str = "model.activation") -> str:
    """`activation` if it is one of ACTIVATIONS, else a ConfigError naming `key`."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"`{key}` must be one of {list(ACTIVATIONS)}. "
                          f"Received: {activation!r}")
    return activation


def activation_of(backbone) -> str:
    """The feed-forward activation of an ALBERT backbone (keras-hub's own: gelu_new)."""
    return getattr(backbone, "activation", DEFAULT_ACTIVATION)


@keras.saving.register_keras_serializable(package="app")
class AlbertActivationBackbone(keras_hub.models.AlbertBackbone):
    """An AlbertBackbone whose feed-forward activation is `activation`.

    Args:
        activation: "gelu_new" (tanh GELU, keras-hub's), "gelu" (exact) or "relu".
        **kwargs: keras-hub AlbertBackbone's arguments.

    Example:
        >>> backbone = AlbertActivationBackbone(
        ...     vocabulary_size=21128, num_layers=4, num_heads=4, embedding_dim=128,
        ...     hidden_dim=312, intermediate_dim=1248, activation="relu")
    """

    def __init__(self, *args, activation: str = DEFAULT_ACTIVATION, **kwargs):
        function = ACTIVATIONS[check_activation(activation, key="activation")]
        super().__init__(*args, **kwargs)
        # The layers were built while keras-hub traced the functional graph; a functional
        # model calls them again on every call, so their dense layer's activation is read then.
        for group in self.transformer_layers:
            for layer in group:
                layer.activation = function
                layer._feedforward_intermediate_dense.activation = function
        self.activation = activation

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


def set_head_activation(masked_lm_head, activation: str) -> None:
    """Give a keras-hub masked-LM head the backbone's activation (transformers' ALBERT applies
    `hidden_act` in its MLM head too; keras-hub's AlbertMaskedLM hard-codes the tanh GELU)."""
    masked_lm_head.intermediate_activation = ACTIVATIONS[activation]
    masked_lm_head._intermediate_dense.activation = ACTIVATIONS[activation]


# === keras-hub's ALBERT tasks for this backbone ===
# keras-hub's `from_preset` picks the task and preprocessor class whose `backbone_cls` is the
# preset's backbone class, so each class a run exports gets a twin bound to this backbone.


@keras.saving.register_keras_serializable(package="app")
class AlbertActivationTextClassifierPreprocessor(
        keras_hub.models.AlbertTextClassifierPreprocessor):
    """keras-hub's AlbertTextClassifierPreprocessor, for an AlbertActivationBackbone preset."""

    backbone_cls = AlbertActivationBackbone


@keras.saving.register_keras_serializable(package="app")
class AlbertActivationTextClassifier(keras_hub.models.AlbertTextClassifier):
    """keras-hub's AlbertTextClassifier on an AlbertActivationBackbone."""

    backbone_cls = AlbertActivationBackbone
    preprocessor_cls = AlbertActivationTextClassifierPreprocessor


@keras.saving.register_keras_serializable(package="app")
class AlbertActivationMaskedLMPreprocessor(keras_hub.models.AlbertMaskedLMPreprocessor):
    """keras-hub's AlbertMaskedLMPreprocessor, for an AlbertActivationBackbone preset."""

    backbone_cls = AlbertActivationBackbone


@keras.saving.register_keras_serializable(package="app")
class AlbertActivationMaskedLM(keras_hub.models.AlbertMaskedLM):
    """keras-hub's AlbertMaskedLM whose head uses the backbone's activation."""

    backbone_cls = AlbertActivationBackbone
    preprocessor_cls = AlbertActivationMaskedLMPreprocessor

    def __init__(self, backbone, preprocessor=None, **kwargs):
        super().__init__(backbone, preprocessor=preprocessor, **kwargs)
        set_head_activation(self.masked_lm_head, activation_of(backbone))


def task_classes(backbone) -> tuple[type, type]:
    """(text classifier, masked LM) classes for `backbone`: keras-hub's own for its backbone."""
    if isinstance(backbone, AlbertActivationBackbone):
        return AlbertActivationTextClassifier, AlbertActivationMaskedLM
    return keras_hub.models.AlbertTextClassifier, keras_hub.models.AlbertMaskedLM
