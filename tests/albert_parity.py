"""Helpers shared by the transformers parity tests: inputs on both sides, outputs compared.

Imported by test_transformers_interop.py (SentencePiece checkpoints) and
test_chinese_checkpoints.py (WordPiece checkpoints); needs torch and transformers.
"""

from pathlib import Path

import keras
import keras_hub
import numpy as np
import torch
import transformers
from conftest import TINY, compose_config

from app.data.task import TaskSpec
from app.models.classifier import build_task_model
from app.runtime.loading import load_backbone, load_preset_tokenizer

# A small ALBERT with shared groups: 4 layers in 2 groups of 2 inner layers.
SMALL = dict(embedding_size=16, hidden_size=32, num_hidden_layers=4, num_hidden_groups=2,
             inner_group_num=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)


def perturb(model) -> None:
    """Random biases and LayerNorm weights, so a swapped or missed tensor shows."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "bias" in name or "LayerNorm" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def app_inputs(folder: Path, texts, pairs=None, sequence_length: int = 64,
               tokenizer: Path | None = None) -> dict:
    """The app's classifier inputs for `texts` (and `pairs`), tokenized by the folder's tokenizer
    (or the `tokenizer` folder's, as `model.tokenizer`)."""
    tokenizer = load_preset_tokenizer(str(folder), tokenizer=None if tokenizer is None
                                      else str(tokenizer))
    preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length)
    inputs = preprocessor(x=list(texts) if pairs is None else (list(texts), list(pairs)))
    inputs, _, _ = keras.utils.unpack_x_y_sample_weight(inputs)
    return {k: np.asarray(v) for k, v in inputs.items()}


def assert_same_ids(app: dict, hf: dict) -> None:
    """The app's (padded to its length) and transformers' token ids, segments and masks agree."""
    length = hf["input_ids"].shape[1]
    np.testing.assert_array_equal(app["token_ids"][:, :length], hf["input_ids"].numpy())
    np.testing.assert_array_equal(app["segment_ids"][:, :length], hf["token_type_ids"].numpy())
    np.testing.assert_array_equal(app["padding_mask"][:, :length], hf["attention_mask"].numpy())
    assert not app["padding_mask"][:, length:].any()


def backbone_differences(folder: Path, app: dict, hf: dict, backbone=None) -> dict[str, float]:
    """Max abs differences of sequence (real tokens) and pooled outputs, app vs transformers'
    `AlbertModel` of the same folder, on the same inputs."""
    hf_model = transformers.AlbertModel.from_pretrained(folder).eval()
    outputs = (backbone or load_backbone(str(folder)))(app)
    with torch.no_grad():
        expected = hf_model(**hf)
    length, mask = hf["input_ids"].shape[1], hf["attention_mask"].numpy()[..., None]
    sequence = np.asarray(outputs["sequence_output"])[:, :length]
    return {
        "sequence": float(np.abs((sequence - expected.last_hidden_state.numpy()) * mask).max()),
        "pooled": float(np.abs(np.asarray(outputs["pooled_output"])
                               - expected.pooler_output.numpy()).max()),
    }


def classifier_from(folder: Path, num_classes: int):
    """The app's classifier of `num_classes` labels on `model.preset=<folder>` (no dropout)."""
    cfg = compose_config(*TINY, f"model.preset={folder}", "model.classifier_dropout=0.0")
    task = TaskSpec("classification", tuple(f"l{i}" for i in range(num_classes)))
    return build_task_model(cfg.model, task, load_preset_tokenizer(str(folder)).vocabulary_size())
