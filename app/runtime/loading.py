"""Safe loading of saved models, weights and keras-hub presets.

Everything the app writes is JSON, `.weights.h5` (HDF5 arrays), `.keras` (a zip of JSON and
HDF5) or a keras-hub preset (JSON and HDF5): no pickle. Loading runs in Keras safe mode, so a
file whose config carries a `Lambda` (Python bytecode) is refused, as is a class that neither
Keras, keras-hub nor the app registers. Every refusal is a DataError (a file) or a ConfigError
(the `model.preset` key) saying what was found and what to do.
"""

import json
import logging
import re
import zipfile
from pathlib import Path

import keras
import keras_hub
import numpy as np

# Keras' safe mode falls short: a global `keras.config.enable_unsafe_deserialization()` wins over
# `load_model(..., safe_mode=True)` (deserialize_keras_object prefers the global flag, measured
# on keras 3.15.1), and keras-hub's `from_preset` follows that flag alone. Keras has no public
# scope to pin it on, hence this private one around every load.
from keras.src.saving.serialization_lib import SafeModeScope
from keras_hub.src.utils import preset_utils

from app.data import wordpiece
from app.data.tokenizer import load_tokenizer, normalization_from_transformers
from app.errors import ConfigError, DataError
from app.runtime import transformers_format

log = logging.getLogger(__name__)

WEIGHTS_SUFFIX = ".weights.h5"
HF_SCHEME = "hf://"
# What a download from the Hugging Face Hub may bring: configs, safetensors weights, the
# SentencePiece model or WordPiece vocab.txt and keras-hub preset files; never a pickle
# (`pytorch_model.bin`).
HF_PATTERNS = ["*.json", "*.safetensors", "*.model", "vocab.txt", "*.weights.h5", "assets/**"]
MAX_MESSAGE = 300
# The tokenizers an ALBERT preset of the app may hold: SentencePiece (keras-hub's, or the app's
# AlbertTextTokenizer subclass) or WordPiece.
PRESET_TOKENIZERS = (keras_hub.models.AlbertTokenizer, wordpiece.AlbertWordPieceTokenizer)
# transformers' tokenizer_class (prefix) -> the tokenizer file it reads.
TOKENIZER_CLASSES = {"AlbertTokenizer": transformers_format.SPIECE_FILE,
                     "BertTokenizer": transformers_format.VOCAB_FILE}
# The app's backbone with another activation than keras-hub's tanh GELU
# (app.models.albert_backbone): runtime may not import models, so it is found by its registered
# name, as a preset's class is.
ACTIVATION_BACKBONE = "app>AlbertActivationBackbone"


def _refusal(error: Exception) -> str:
    """Why Keras refused to deserialize a config, in one line."""
    message = " ".join(str(error).split())
    unknown = re.search(r"Could not (?:locate|deserialize) (?:class |function )?'([^']+)'"
                        r"|no class registered with Keras for (\S+?)\.?(?: |$)", message)
    if unknown:
        name = unknown.group(1) or unknown.group(2)
        return (f"it holds a class the app does not know ({name!r}); only Keras, "
                f"keras-hub and `app` classes can be loaded")
    if "Lambda" in message or "lambda" in message or "safe_mode" in message:
        return ("it holds a Lambda layer or function (arbitrary Python code), refused in safe "
                "mode; rebuild the model without Lambda layers (e.g. a registered custom layer)")
    return message[:MAX_MESSAGE]


def load_model(path: str | Path, compile: bool = True) -> keras.Model:
    """Load a `.keras` file in Keras safe mode (no Lambda layers, only known classes).

    Args:
        path: a `.keras` file, e.g. a run's `export/model.keras`.
        compile: whether to restore the saved optimizer, loss and metrics too.

    Example:
        >>> model = load_model("experiments/default/<run>/export/model.keras")
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise DataError(f"Expected a `.keras` model file. Received: '{path}'")
    if not path.is_file():
        raise DataError(f"Model file does not exist: '{path}'")
    if not zipfile.is_zipfile(path):
        raise DataError(f"'{path}' is not a `.keras` archive (a zip file); was it truncated?")
    try:
        # Neutral global flag: keras.config.enable_unsafe_deserialization() would override
        # safe_mode=True, while a global True would also refuse the tokenizer's own vocabulary.
        with SafeModeScope(None):
            return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile,
            json.JSONDecodeError) as error:
        raise DataError(f"'{path}' cannot be loaded: {_refusal(error)}") from error


def load_weights(model: keras.Model, path: str | Path) -> None:
    """Load a `.weights.h5` checkpoint (HDF5 arrays only) into a built model.

    Args:
        model: a model with the architecture the checkpoint was saved from.
        path: the checkpoint, e.g. a run's `checkpoints/best.weights.h5`.
    """
    path = Path(path)
    if not path.name.endswith(WEIGHTS_SUFFIX):
        raise DataError(f"Expected a `{WEIGHTS_SUFFIX}` checkpoint. Received: '{path}'")
    if not path.is_file():
        raise DataError(f"Checkpoint does not exist: '{path}'")
    try:
        model.load_weights(path)
    except (ValueError, OSError, KeyError) as error:
        raise DataError(f"'{path}' does not fit this model or is damaged: "
                        f"{' '.join(str(error).split())[:MAX_MESSAGE]}") from error


def load_preset(cls, preset: str, key: str = "model.preset"):
    """`cls.from_preset(preset)` in safe mode; a ConfigError naming `key` when it fails.

    Args:
        cls: a keras-hub class, e.g. `keras_hub.models.AlbertBackbone` or `AlbertTokenizer`,
            or a tuple of tokenizer classes, any of which the preset's tokenizer may be.
        preset: a local preset folder or a published preset name.
        key: the config key the preset came from, named in errors.
    """
    try:
        if isinstance(cls, tuple) or issubclass(cls, keras_hub.tokenizers.Tokenizer):
            return _load_tokenizer(cls, preset)
        with SafeModeScope(True):
            return cls.from_preset(preset)
    except OSError as error:
        # requests' ConnectionError is an OSError: a published preset without network.
        raise ConfigError(
            f"`{key}` {preset!r} could not be read or downloaded ({type(error).__name__}); "
            f"without network use a local preset folder (a run's export/preset)"
        ) from error
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as error:
        raise ConfigError(f"`{key}` {preset!r} cannot be loaded: {_refusal(error)}") from error


def _load_tokenizer(cls: type | tuple[type, ...], preset: str):
    """A preset's tokenizer (an instance of `cls`): its config in safe mode, then its own
    vocabulary asset.

    `from_preset` in safe mode refuses every tokenizer, since it loads the vocabulary from a
    file path; that file is the preset's own asset, so it is loaded outside the scope.
    """
    # As from_preset does first: the preset's model config must name a registered class.
    config = preset_utils.load_json(preset, preset_utils.CONFIG_FILE)
    name = config.get("registered_name") or config.get("class_name")
    if keras.saving.get_registered_object(name) is None:
        raise ValueError(f"no class registered with Keras for {name}. ")
    with SafeModeScope(True):
        tokenizer = keras.saving.deserialize_keras_object(
            preset_utils.load_json(preset, preset_utils.TOKENIZER_CONFIG_FILE)
        )
    if not isinstance(tokenizer, cls):
        expected = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        raise TypeError(f"expected a {expected}, found {type(tokenizer).__name__}")
    tokenizer.load_preset_assets(preset)
    return tokenizer


def local_preset(preset: str, key: str = "model.preset") -> str:
    """`hf://org/name` downloaded (or found in the Hugging Face cache) as a local folder.

    Only JSON, safetensors, SentencePiece and keras-hub preset files are fetched, never a pickle.
    Anything else (a local folder, a keras-hub preset name, `kaggle://...`) is returned as it is.
    """
    if not preset.startswith(HF_SCHEME):
        return preset
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(preset[len(HF_SCHEME):], allow_patterns=HF_PATTERNS)
    except OSError as error:  # offline, unknown repository, HTTP errors
        raise ConfigError(
            f"`{key}` {preset!r} could not be downloaded ({type(error).__name__}); without "
            f"network, download it where there is one (`hf download {preset[len(HF_SCHEME):]}`) "
            f"and set `{key}` to that local folder"
        ) from error


def _is_transformers_folder(preset: str, key: str) -> bool:
    """Whether `preset` is a transformers folder (else a keras-hub preset); brightmart's
    native albert_zh layout, neither, is a ConfigError."""
    transformers_format.check_not_brightmart(preset, key)
    return transformers_format.is_transformers_folder(preset)


def new_backbone(activation: str = transformers_format.DEFAULT_ACTIVATION, **args):
    """A fresh ALBERT backbone: keras-hub's own for its tanh GELU (presets keras-hub alone
    loads), else the app's AlbertActivationBackbone with `activation`."""
    if activation == transformers_format.DEFAULT_ACTIVATION:
        return keras_hub.models.AlbertBackbone(**args)
    cls = keras.saving.get_registered_object(ACTIVATION_BACKBONE)
    if cls is None:
        raise RuntimeError(f"{ACTIVATION_BACKBONE} is not registered: import "
                           f"app.models.albert_backbone before loading a {activation} backbone")
    return cls(activation=activation, **args)


def load_backbone(preset: str, key: str = "model.preset") -> keras_hub.models.AlbertBackbone:
    """An ALBERT backbone from a keras-hub preset or a transformers ALBERT folder, safely.

    A transformers folder's `hidden_act` other than the tanh GELU gives the app's
    AlbertActivationBackbone (app.models.albert_backbone, which must be imported).
    """
    preset = local_preset(preset, key)
    if not _is_transformers_folder(preset, key):
        return load_preset(keras_hub.models.AlbertBackbone, preset, key)
    config = transformers_format.read_config(preset, key)
    arrays = transformers_format.read_weights(preset, key)
    backbone = new_backbone(**transformers_format.backbone_args(config))
    weights = transformers_format.backbone_weights(backbone,
                                                   transformers_format.backbone_prefix(arrays))
    pooler = [w for w in weights if transformers_format.is_pooler(w.key)]
    if not any(w.key in arrays for w in pooler):
        log.info("'%s' has no pooler weights (a token classifier's checkpoint): a text "
                 "classifier built on it starts its pooler fresh", preset)
        weights = [w for w in weights if not transformers_format.is_pooler(w.key)]
    transformers_format.assign(weights, arrays, preset)
    return backbone


def preset_positions(preset: str, key: str = "model.preset") -> int:
    """The length of a preset's position table (its `max_sequence_length`), from its config
    alone (no weights read)."""
    folder = local_preset(preset, key)
    try:
        if _is_transformers_folder(folder, key):
            return int(transformers_format.read_config(folder, key)["max_position_embeddings"])
        config = preset_utils.load_json(folder, preset_utils.CONFIG_FILE)
        return int(config["config"]["max_sequence_length"])
    except (OSError, KeyError, ValueError) as error:
        raise ConfigError(f"`{key}` {preset!r} has no readable max_sequence_length "
                          f"({type(error).__name__}: {error})") from error


def load_heads(model: keras.Model, preset: str, key: str = "model.preset") -> list[str]:
    """Load the heads a transformers checkpoint holds for `model` (classifier, MLM, SOP).

    A head whose tensors are absent, or of another shape (a classifier with other labels), keeps
    its fresh initialization. Returns the names of the heads loaded.
    """
    preset = local_preset(preset, key)
    if not transformers_format.is_transformers_folder(preset):
        return []
    arrays = transformers_format.read_weights(preset, key)
    loaded = []
    for head, weights in transformers_format.head_weights(model).items():
        fits = all(w.key in arrays and arrays[w.key].size == np.prod(w.variable.shape)
                   for w in weights)
        if fits:
            transformers_format.assign(weights, arrays, preset)
            loaded.append(head)
    return loaded


def checkpoint_labels(preset: str | None, key: str = "model.preset") -> tuple[str, ...] | None:
    """The label names of a transformers task checkpoint (`id2label`, in id order), or None
    (no preset, a keras-hub preset, or a config without them)."""
    if preset is None:
        return None
    folder = local_preset(preset, key)
    if not _is_transformers_folder(folder, key):
        return None
    id2label = transformers_format.read_config(folder, key).get("id2label") or {}
    return tuple(id2label[str(i)] for i in range(len(id2label))) or None


def load_preset_tokenizer(preset: str, key: str = "model.preset", tokenizer: str | None = None):
    """The tokenizer of a keras-hub preset, or of a transformers folder with its normalization.

    Args:
        preset: a keras-hub preset or a transformers folder (`model.preset`).
        key: the config key of `preset`, named in errors.
        tokenizer: a folder holding the tokenizer files (`model.tokenizer`, for a checkpoint
            that ships none): its spiece.model or vocab.txt and its own tokenizer_config.json.

    Example:
        >>> tokenizer = load_preset_tokenizer("albert-tiny-chinese", tokenizer="bert-base-chinese")
    """
    preset = local_preset(preset, key)
    folder, folder_key = (preset, key) if tokenizer is None else (tokenizer, "model.tokenizer")
    if not _is_transformers_folder(preset, key):
        if tokenizer is None:
            return load_preset(PRESET_TOKENIZERS, preset, key)
        return read_tokenizer_folder(Path(folder), folder_key)
    config = transformers_format.read_config(preset, key)
    fallback_class = config.get("tokenizer_class") if tokenizer is None else None
    loaded = read_tokenizer_folder(Path(folder), folder_key, fallback_class)
    if loaded.vocabulary_size() != config["vocab_size"]:
        raise ConfigError(
            f"`{folder_key}` '{folder}': the tokenizer has {loaded.vocabulary_size()} entries, "
            f"but `{key}` '{preset}' {transformers_format.CONFIG_FILE} has vocab_size "
            f"{config['vocab_size']}; expected the checkpoint's own tokenizer")
    return loaded


def read_tokenizer_folder(folder: Path, key: str, fallback_class: str | None = None):
    """The tokenizer of a transformers tokenizer folder: spiece.model or vocab.txt, normalized
    as its tokenizer_config.json says.

    Args:
        folder: the folder with spiece.model and/or vocab.txt (and tokenizer_config.json).
        key: its config key, named in errors.
        fallback_class: config.json's tokenizer_class, used when tokenizer_config.json has none.
    """
    settings_file = folder / transformers_format.TOKENIZER_CONFIG_FILE
    try:
        settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    except (OSError, ValueError) as error:
        raise ConfigError(f"`{key}` '{folder}': cannot read "
                          f"{transformers_format.TOKENIZER_CONFIG_FILE}: {error}") from error
    name = tokenizer_file(folder, key, settings.get("tokenizer_class") or fallback_class)
    if name == transformers_format.SPIECE_FILE:
        return load_tokenizer(folder / name, **normalization_from_transformers(settings))
    return wordpiece.load_wordpiece(folder / name,
                                    **wordpiece.normalization_from_transformers(settings))


def tokenizer_file(folder: Path, key: str, tokenizer_class: str | None) -> str:
    """Which tokenizer file of `folder` to read: the only one there, or, when both are, the one
    `tokenizer_class` reads (spiece.model without one, as transformers' ALBERT default)."""
    present = [name for name in transformers_format.TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        raise ConfigError(f"`{key}` '{folder}' has no tokenizer (neither "
                          f"{' nor '.join(transformers_format.TOKENIZER_FILES)}); set "
                          f"`model.tokenizer=<folder with vocab.txt or spiece.model>`")
    wanted = class_file(tokenizer_class, folder, key)
    if len(present) == 1:
        if wanted not in (None, present[0]):
            log.warning("`%s` '%s': tokenizer_class %s reads %s, but the folder holds only %s; "
                        "using it", key, folder, tokenizer_class, wanted, present[0])
        return present[0]
    chosen = wanted or transformers_format.SPIECE_FILE
    log.info("`%s` '%s' holds both %s: using %s (tokenizer_class %s)", key, folder,
             " and ".join(present), chosen, tokenizer_class)
    return chosen


def class_file(tokenizer_class: str | None, folder: Path, key: str) -> str | None:
    """The tokenizer file transformers' `tokenizer_class` reads (None for no class)."""
    if tokenizer_class is None:
        return None
    for prefix, file in TOKENIZER_CLASSES.items():
        if tokenizer_class in (prefix, f"{prefix}Fast"):
            return file
    supported = [f"{prefix}{fast}" for prefix in TOKENIZER_CLASSES for fast in ("", "Fast")]
    raise ConfigError(f"`{key}` '{folder}': tokenizer_class {tokenizer_class!r} is not "
                      f"supported; expected one of {supported}")
