"""The transformers ALBERT format: `config.json`, `model.safetensors`, and a tokenizer
(`spiece.model`, or a BERT WordPiece `vocab.txt` as Chinese ALBERTs ship), both ways.

keras-hub reads this layout for the backbone alone (keras_hub/src/utils/transformers/
convert_albert.py): it neither reads the heads (masked-LM, sentence-order, classifier) nor
the activation (`hidden_act`) nor a vocab.txt, nor writes the format. So every weight is named
once here, as a `Weight` that converts between the torch layout and the Keras variable, for
loading and for export alike. Weights are read from safetensors only (a `pytorch_model.bin` is
a pickle).
"""

import json
from dataclasses import dataclass
from math import prod
from pathlib import Path

import keras
import numpy as np

from app.data.wordpiece import VOCAB_FILE
from app.errors import ConfigError, DataError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SHARDED_INDEX_FILE = "model.safetensors.index.json"
PICKLE_WEIGHTS_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
SPIECE_FILE = "spiece.model"
TOKENIZER_FILES = (SPIECE_FILE, VOCAB_FILE)
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# transformers' `hidden_act` -> the backbone's `activation` (app.models.albert_backbone).
ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu",
               "relu": "relu"}
DEFAULT_ACTIVATION = "gelu_new"  # keras-hub's AlbertBackbone: the tanh GELU
# brightmart's albert_zh (TF checkpoints): these config keys and weight names are not transformers'.
BRIGHTMART_CONFIG_KEYS = ("ln_type",)
BRIGHTMART_WEIGHT = "word_embeddings_2"
CONVERT_BRIGHTMART = ("convert it with transformers' "
                      "convert_albert_original_tf_checkpoint_to_pytorch first (then save it "
                      "with safe_serialization=True)")
LAYER_NORM_EPS = 1e-12
BACKBONE_PREFIX = "albert."
# The backbone arguments read from config.json, by their transformers names.
CONFIG_NAMES = {
    "vocabulary_size": "vocab_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "embedding_dim": "embedding_size",
    "hidden_dim": "hidden_size",
    "intermediate_dim": "intermediate_size",
    "num_groups": "num_hidden_groups",
    "num_inner_repetitions": "inner_group_num",
    "max_sequence_length": "max_position_embeddings",
    "num_segments": "type_vocab_size",
}
CONVERT_COMMAND = (
    "python -c \"from transformers import AutoModel; "
    "AutoModel.from_pretrained('<folder>').save_pretrained('<folder>', safe_serialization=True)\""
)


@dataclass(frozen=True)
class Weight:
    """One Keras variable and its tensor in `model.safetensors`.

    Args:
        key: the tensor's name in transformers, e.g. `albert.pooler.weight`.
        variable: the Keras variable.
        linear: a torch `Linear` weight (`[out, in]`), transposed against Keras' kernel.
        in_rank: how many leading axes of the Keras kernel are its input (2 for the attention
            output, whose kernel is `[heads, head_dim, hidden]`).
    """

    key: str
    variable: keras.Variable
    linear: bool = False
    in_rank: int = 1

    def to_keras(self, array: np.ndarray) -> np.ndarray:
        """The transformers tensor in this variable's shape."""
        shape = tuple(self.variable.shape)
        array = array.T if self.linear else array
        if prod(array.shape) != prod(shape):
            raise ValueError(f"{self.key} has shape {list(array.shape)}, expected {list(shape)}")
        return array.reshape(shape)

    def to_transformers(self) -> np.ndarray:
        """This variable's value in the transformers layout."""
        value = keras.ops.convert_to_numpy(self.variable).astype(np.float32)
        if self.linear:
            return np.ascontiguousarray(value.reshape(prod(value.shape[:self.in_rank]), -1).T)
        return value.reshape(-1) if self.key.endswith("bias") else value


def _dense(key: str, layer, in_rank: int = 1) -> list[Weight]:
    return [Weight(f"{key}.weight", layer.kernel, linear=True, in_rank=in_rank),
            Weight(f"{key}.bias", layer.bias)]


def _norm(key: str, layer) -> list[Weight]:
    return [Weight(f"{key}.weight", layer.gamma), Weight(f"{key}.bias", layer.beta)]


def backbone_weights(backbone, prefix: str = BACKBONE_PREFIX) -> list[Weight]:
    """Every weight of a keras-hub `AlbertBackbone`, named as in transformers' `AlbertModel`."""
    embeddings = f"{prefix}embeddings"
    weights = [
        Weight(f"{embeddings}.word_embeddings.weight", backbone.token_embedding.embeddings),
        Weight(f"{embeddings}.position_embeddings.weight",
               backbone.position_embedding.position_embeddings),
        Weight(f"{embeddings}.token_type_embeddings.weight",
               backbone.segment_embedding.embeddings),
        *_norm(f"{embeddings}.LayerNorm", backbone.embeddings_layer_norm),
        *_dense(f"{prefix}encoder.embedding_hidden_mapping_in", backbone.embeddings_projection),
    ]
    for group in range(backbone.num_groups):
        for inner in range(backbone.num_inner_repetitions):
            layer = backbone.get_layer(f"group_{group}_inner_layer_{inner}")
            attention = layer._self_attention_layer
            key = f"{prefix}encoder.albert_layer_groups.{group}.albert_layers.{inner}"
            weights += [
                *_dense(f"{key}.attention.query", attention.query_dense),
                *_dense(f"{key}.attention.key", attention.key_dense),
                *_dense(f"{key}.attention.value", attention.value_dense),
                *_dense(f"{key}.attention.dense", attention.output_dense, in_rank=2),
                *_norm(f"{key}.attention.LayerNorm", layer._self_attention_layer_norm),
                *_dense(f"{key}.ffn", layer._feedforward_intermediate_dense),
                *_dense(f"{key}.ffn_output", layer._feedforward_output_dense),
                *_norm(f"{key}.full_layer_layer_norm", layer._feedforward_layer_norm),
            ]
    return weights + _dense(f"{prefix}pooler", backbone.pooled_dense)


def head_weights(model) -> dict[str, list[Weight]]:
    """The weights of a model's heads, by head, named as in transformers.

    A text classifier's `output_dense` is `AlbertForSequenceClassification`'s `classifier`; a
    masked-LM head (its decoder is tied to the token embedding) is `AlbertForPreTraining`'s
    `predictions`, a sentence-order head its `sop_classifier`.
    """
    heads = {}
    if hasattr(model, "output_dense"):
        heads["classifier"] = _dense("classifier", model.output_dense)
    if hasattr(model, "masked_lm_head"):
        head = model.masked_lm_head
        heads["predictions"] = [*_dense("predictions.dense", head._intermediate_dense),
                                *_norm("predictions.LayerNorm", head._intermediate_layer_norm),
                                Weight("predictions.bias", head._bias)]
    if hasattr(model, "sop_head"):
        heads["sop_classifier"] = _dense("sop_classifier.classifier", model.sop_head)
    return heads


# === Reading ===

def is_transformers_folder(path: str | Path) -> bool:
    """Whether `path` is a folder whose `config.json` is a transformers config (`model_type`)."""
    config = Path(path) / CONFIG_FILE
    try:
        return "model_type" in json.loads(config.read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_not_brightmart(folder: str | Path, key: str = "model.preset") -> None:
    """A ConfigError when `folder` holds brightmart's native albert_zh layout (not transformers').

    Told by its config keys (`ln_type`, in config.json or albert_config*.json) or TF checkpoint.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    configs = [folder / CONFIG_FILE, *sorted(folder.glob("albert_config*.json"))]
    for path in configs:
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found = [name for name in BRIGHTMART_CONFIG_KEYS if name in config]
        if found:
            raise ConfigError(f"`{key}` '{folder}': {path.name} has {found[0]!r}, brightmart's "
                              f"albert_zh layout, not the transformers layout; "
                              f"{CONVERT_BRIGHTMART}")
    if not (folder / CONFIG_FILE).is_file() and any(folder.glob("*.ckpt*.index")):
        raise ConfigError(f"`{key}` '{folder}' holds a TensorFlow checkpoint, not the "
                          f"transformers layout; {CONVERT_BRIGHTMART}")


def read_config(folder: str | Path, key: str = "model.preset") -> dict:
    """A transformers ALBERT folder's `config.json`, checked: ALBERT, safetensors, activation.

    Raises:
        ConfigError: naming `key` and what the folder lacks or holds instead.
    """
    folder = Path(folder)
    where = f"`{key}` '{folder}'"
    check_not_brightmart(folder, key)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{where}: cannot read {CONFIG_FILE}: {error}") from error
    if config.get("model_type") != "albert":
        raise ConfigError(f"{where} is not an ALBERT checkpoint: {CONFIG_FILE} has model_type "
                          f"{config.get('model_type')!r}, expected 'albert'")
    if not (folder / WEIGHTS_FILE).is_file() and not (folder / SHARDED_INDEX_FILE).is_file():
        pickled = [name for name in PICKLE_WEIGHTS_FILES if (folder / name).is_file()]
        if pickled:
            raise ConfigError(
                f"{where} holds only {pickled[0]} (a pickle, which can run code when loaded); "
                f"convert it to {WEIGHTS_FILE} once where you trust it: {CONVERT_COMMAND}")
        raise ConfigError(f"{where} has no {WEIGHTS_FILE}")
    activation = config.get("hidden_act", DEFAULT_ACTIVATION)
    if activation not in ACTIVATIONS:
        raise ConfigError(f"{where}: {CONFIG_FILE} has hidden_act {activation!r}; supported: "
                          f"{list(ACTIVATIONS)}")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"{where}: position_embedding_type "
                          f"{config['position_embedding_type']!r} is not supported, "
                          f"only 'absolute'")
    return config


def backbone_args(config: dict) -> dict:
    """Backbone arguments (`activation` included) from a checked transformers `config.json`."""
    args = {name: config[hf_name] for name, hf_name in CONFIG_NAMES.items()}
    return {**args, "dropout": config.get("hidden_dropout_prob", 0.0),
            "activation": ACTIVATIONS[config.get("hidden_act", DEFAULT_ACTIVATION)]}


def read_weights(folder: str | Path, key: str = "model.preset") -> dict[str, np.ndarray]:
    """Every tensor of a folder's `model.safetensors` (or its shards), as float32 arrays."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(folder)
    files = [folder / WEIGHTS_FILE]
    if not files[0].is_file():
        index = json.loads((folder / SHARDED_INDEX_FILE).read_text())
        files = [folder / name for name in sorted(set(index["weight_map"].values()))]
    arrays = {}
    for path in files:
        try:
            arrays.update(load_file(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise DataError(f"`{key}`: '{path}' is not a readable safetensors file "
                            f"(truncated or damaged?): {error}") from error
    native = [name for name in arrays if BRIGHTMART_WEIGHT in name]
    if native:
        raise ConfigError(f"`{key}` '{folder}' has weights named like {native[0]!r}, brightmart's "
                          f"albert_zh layout, not the transformers layout; {CONVERT_BRIGHTMART}")
    return {name: array.astype(np.float32) for name, array in arrays.items()}


def assign(weights: list[Weight], arrays: dict[str, np.ndarray], source: str) -> None:
    """Set each weight from `arrays`; a DataError naming `source` for a missing or odd tensor."""
    missing = [w.key for w in weights if w.key not in arrays]
    if missing:
        raise DataError(f"'{source}' lacks {len(missing)} weights of this model, e.g. "
                        f"{missing[:3]}")
    for weight in weights:
        try:
            weight.variable.assign(weight.to_keras(arrays[weight.key]))
        except ValueError as error:
            raise DataError(f"'{source}' does not fit this model: {error}") from error


def is_pooler(key: str) -> bool:
    """Whether a transformers tensor name is the pooler's (`albert.pooler.weight`, ...): token
    classifiers and masked LMs have none."""
    return key.split(".")[-2:-1] == ["pooler"]


def backbone_prefix(arrays: dict[str, np.ndarray]) -> str:
    """`albert.` for a task model's checkpoint, `` for a bare `AlbertModel`'s."""
    return BACKBONE_PREFIX if any(k.startswith(BACKBONE_PREFIX) for k in arrays) else ""


# === Writing ===

def transformers_config(backbone, tokenizer, architecture: str, **extra) -> dict:
    """A transformers `config.json` for an ALBERT backbone, its tokenizer's special ids (and
    `extra` keys)."""
    args = backbone.get_config()
    return {
        "architectures": [architecture],
        "model_type": "albert",
        **{hf_name: args[name] for name, hf_name in CONFIG_NAMES.items()},
        "hidden_act": args.get("activation", DEFAULT_ACTIVATION),
        "hidden_dropout_prob": args["dropout"],
        "attention_probs_dropout_prob": args["dropout"],
        "layer_norm_eps": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "position_embedding_type": "absolute",
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.start_token_id,
        "eos_token_id": tokenizer.end_token_id,
        "tie_word_embeddings": True,
        **extra,
    }


def write_weights(weights: list[Weight], path: str | Path) -> None:
    """Write the weights' transformers tensors to a safetensors file."""
    from safetensors.numpy import save_file

    save_file({w.key: w.to_transformers() for w in weights}, str(path),
              metadata={"format": "pt"})
