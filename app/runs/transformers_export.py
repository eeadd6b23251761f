"""A run's model in the transformers format: `export/hf/`, loadable with `from_pretrained`.

A token classifier becomes `AlbertForTokenClassification` (tags from labels.json), a text
classifier `AlbertForSequenceClassification` (labels from labels.json; one output
is a regression), the pretraining model `AlbertForPreTraining` (masked-LM and sentence-order
heads); its tokenizer a SentencePiece `spiece.model` (AlbertTokenizer) or a WordPiece
`vocab.txt` (BertTokenizer). Written with numpy and safetensors alone: exporting needs no torch.
"""

from pathlib import Path

import keras_hub

from app.data import wordpiece
from app.data.tokenizer import transformers_tokenizer_config
from app.runs.record import write_json
from app.runtime import transformers_format as fmt


def export_transformers(model, tokenizer, out_dir: Path, sequence_length: int,
                        label_names: list[str] | None = None, multilabel: bool = False) -> Path:
    """Write config.json, model.safetensors, spiece.model or vocab.txt, tokenizer_config.json.

    Args:
        model: a keras-hub `AlbertTextClassifier` or the app's `AlbertPretrainer`.
        tokenizer: the run's tokenizer (SentencePiece or WordPiece, and its normalization).
        out_dir: the folder to write, e.g. a run's `export/hf`.
        sequence_length: the longest input the run was trained on (`model_max_length`).
        label_names: a classifier's label names, in output order.
        multilabel: a multi-label classifier (`problem_type: multi_label_classification`).
    """
    heads = fmt.head_weights(model)
    backbone = fmt.backbone_weights(model.backbone)
    if "classifier" in heads and len(model.output.shape) == 3:  # a tag per position
        config = _token_classifier_config(model, tokenizer, label_names)
        backbone = [w for w in backbone if not fmt.is_pooler(w.key)]  # it has none
    elif "classifier" in heads:
        config = _classifier_config(model, tokenizer, label_names, multilabel)
    else:
        config = fmt.transformers_config(model.backbone, tokenizer, "AlbertForPreTraining")
    weights = backbone + [w for h in heads.values() for w in h]
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt.write_weights(weights, out_dir / fmt.WEIGHTS_FILE)
    write_tokenizer(tokenizer, out_dir, sequence_length)
    write_json(out_dir / fmt.CONFIG_FILE, config)
    return out_dir


def write_tokenizer(tokenizer, out_dir: Path, sequence_length: int) -> None:
    """The tokenizer as transformers reads it: vocab.txt (WordPiece) or spiece.model, and
    tokenizer_config.json with its normalization."""
    if isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer):
        (out_dir / fmt.VOCAB_FILE).write_text(
            "".join(f"{token}\n" for token in tokenizer.get_vocabulary()), encoding="utf-8")
        settings = wordpiece.transformers_tokenizer_config(
            tokenizer, model_max_length=sequence_length)
    else:
        (out_dir / fmt.SPIECE_FILE).write_bytes(tokenizer.proto)
        settings = transformers_tokenizer_config(tokenizer, model_max_length=sequence_length)
    write_json(out_dir / fmt.TOKENIZER_CONFIG_FILE, settings)


def _classifier_config(model, tokenizer, label_names: list[str] | None,
                       multilabel: bool) -> dict:
    """config.json of `AlbertForSequenceClassification`: labels (single- or multi-label), or
    a one-output regression."""
    num_outputs = model.output_dense.units
    extra = {"classifier_dropout_prob": model.dropout}
    if num_outputs == 1:
        extra |= {"problem_type": "regression", "num_labels": 1}
    else:
        names = list(label_names) if label_names else [f"LABEL_{i}" for i in range(num_outputs)]
        extra |= {"problem_type": ("multi_label_classification" if multilabel
                                   else "single_label_classification"),
                  "id2label": dict(enumerate(names)),
                  "label2id": {name: i for i, name in enumerate(names)}}
    return fmt.transformers_config(model.backbone, tokenizer, "AlbertForSequenceClassification",
                                   **extra)


def _token_classifier_config(model, tokenizer, label_names: list[str]) -> dict:
    """config.json of `AlbertForTokenClassification`: the tags as id2label."""
    names = list(label_names)
    return fmt.transformers_config(model.backbone, tokenizer, "AlbertForTokenClassification",
                                   classifier_dropout_prob=model.dropout,
                                   id2label=dict(enumerate(names)),
                                   label2id={name: i for i, name in enumerate(names)})
