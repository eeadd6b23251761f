"""Safe loading of saved models, weights and keras-hub presets.

Everything the app writes is JSON, `.weights.h5` (HDF5 arrays), `.keras` (a zip of JSON and
HDF5) or a keras-hub preset (JSON and HDF5): no pickle. Loading runs in Keras safe mode, so a
file whose config carries a `Lambda` (Python bytecode) is refused, as is a class that neither
Keras, keras-hub nor the app registers. Every refusal is a DataError (a file) or a ConfigError
(the `model.preset` key) saying what was found and what to do.
"""

import json
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

from app.data.tokenizer import load_tokenizer, normalization_from_transformers
from app.errors import ConfigError, DataError
from app.runtime import transformers_format

WEIGHTS_SUFFIX = ".weights.h5"
HF_SCHEME = "hf://"
# What a download from the Hugging Face Hub may bring: configs, safetensors weights, the
# SentencePiece model and keras-hub preset files; never a pickle (`pytorch_model.bin`).
HF_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.weights.h5", "assets/**"]
MAX_MESSAGE = 300


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
        cls: a keras-hub class, e.g. `keras_hub.models.AlbertBackbone` or `AlbertTokenizer`.
        preset: a local preset folder or a published preset name.
        key: the config key the preset came from, named in errors.
    """
    try:
        if issubclass(cls, keras_hub.tokenizers.Tokenizer):
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


def _load_tokenizer(cls, preset: str):
    """A preset's tokenizer: its config in safe mode, then its own vocabulary asset.

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
        raise TypeError(f"expected a {cls.__name__}, found {type(tokenizer).__name__}")
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


def load_backbone(preset: str, key: str = "model.preset") -> keras_hub.models.AlbertBackbone:
    """An AlbertBackbone from a keras-hub preset or a transformers ALBERT folder, safely."""
    preset = local_preset(preset, key)
    if not transformers_format.is_transformers_folder(preset):
        return load_preset(keras_hub.models.AlbertBackbone, preset, key)
    config = transformers_format.read_config(preset, key)
    arrays = transformers_format.read_weights(preset, key)
    backbone = keras_hub.models.AlbertBackbone(**transformers_format.backbone_args(config))
    transformers_format.assign(
        transformers_format.backbone_weights(backbone, transformers_format.backbone_prefix(arrays)),
        arrays, preset)
    return backbone


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


def load_preset_tokenizer(preset: str, key: str = "model.preset"):
    """The tokenizer of a keras-hub preset, or of a transformers folder with its normalization."""
    preset = local_preset(preset, key)
    if not transformers_format.is_transformers_folder(preset):
        return load_preset(keras_hub.models.AlbertTokenizer, preset, key)
    transformers_format.read_config(preset, key)
    settings_file = Path(preset) / transformers_format.TOKENIZER_CONFIG_FILE
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    return load_tokenizer(Path(preset) / transformers_format.SPIECE_FILE,
                          **normalization_from_transformers(settings))
