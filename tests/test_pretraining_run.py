"""Tiny end-to-end pretraining runs: loss falls, run folder, preset hand-off, errors up front."""

import json
import math
import subprocess
import sys
from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest
import sentencepiece
from conftest import TINY, compose_config
from test_pretraining_data import synthetic_documents, write_corpus

from app.config.validate import validate
from app.data.task import TaskSpec
from app.errors import ConfigError, DataError
from app.models.classifier import build_task_model
from app.tasks.tokenizer import build_tokenizer
from app.train import train

PRETRAIN = [
    *TINY,
    "experiment=pretrain_wikitext2",
    "data=text_corpus",
    "data.sequence_length=64",  # whole sentences: two of the synthetic ones fit
    "data.max_predictions=10",
    # One eval batch: val_mlm_loss (a mean of per-batch means) is then exactly log perplexity
    # (a mean over predictions), whatever the number of predictions per sequence.
    "data.max_eval_examples=16",
    # Punctuation is a word of its own for masking (Google's rule): val MLM loss 4.13 -> 3.87 in
    # 3 epochs, 3.65 in 4.
    "trainer.epochs=4",
    "optimizer.learning_rate=0.05",
]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(out / "part1.txt", synthetic_documents(70, seed=11))
    write_corpus(out / "more" / "part2.txt", synthetic_documents(70, seed=12))
    return out


@pytest.fixture(scope="module")
def pretrained(corpus_dir, tmp_path_factory) -> tuple[dict, Path]:
    cfg = compose_config(*PRETRAIN, f"data.dir={corpus_dir}")
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    return train(cfg, run_dir), run_dir


def test_tiny_pretraining_run_loss_falls(pretrained):
    metrics, run_dir = pretrained
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    for name in ("env.json", "metrics.json", "tokenizer/spm.model", "checkpoints/best.weights.h5",
                 "checkpoints/last.weights.h5", "export/model.keras",
                 "export/preset/config.json", "export/preset/tokenizer.json",
                 "export/preset/model.weights.h5"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    subsets = {f"val_sop_accuracy_{kind}": kind for kind in ("whole", "trimmed", "random_next")}
    assert set(metrics["final"]) == {"val_loss", "val_mlm_loss", "val_sop_loss",
                                     "val_mlm_accuracy", "val_mlm_perplexity", "val_sop_accuracy",
                                     *subsets}
    assert metrics["eval_pairs"]["whole"] > 0 and metrics["train_pairs"]["whole"] > 0
    for name, value in metrics["final"].items():
        # A SOP subset the eval set lacks is NaN; every other value is a number.
        empty = name in subsets and metrics["eval_pairs"][subsets[name]] == 0
        assert math.isnan(value) if empty else math.isfinite(value), (name, value)
    counts = {kind: metrics["eval_pairs"][kind] for kind in ("whole", "random_next")}
    # The subsets' accuracies average to the overall one (whole and random B are disjoint).
    if metrics["eval_pairs"]["trimmed"] == 0:
        assert sum(metrics["final"][f"val_sop_accuracy_{k}"] * n for k, n in counts.items()) \
            / sum(counts.values()) == pytest.approx(metrics["final"]["val_sop_accuracy"], abs=1e-5)
    losses = metrics["history"]["loss"]
    assert losses[-1] < losses[0]
    assert metrics["final"]["val_mlm_loss"] < metrics["initial"]["val_mlm_loss"] - 0.3
    assert metrics["final"]["val_mlm_perplexity"] == pytest.approx(
        math.exp(metrics["final"]["val_mlm_loss"]), rel=1e-3)
    assert metrics["optimized_metric"]["name"] == "val_mlm_accuracy"


def same_weights(left: list, right: list) -> bool:
    return len(left) == len(right) and all(
        np.array_equal(a, b) for a, b in zip(left, right, strict=True))


def test_exported_preset_holds_the_pretrained_weights_and_tokenizer(pretrained):
    _, run_dir = pretrained
    preset = str(run_dir / "export" / "preset")
    pretrainer = keras.saving.load_model(run_dir / "export" / "model.keras", compile=False)
    backbone = keras_hub.models.AlbertBackbone.from_preset(preset)
    assert same_weights(backbone.get_weights(), pretrainer.backbone.get_weights())
    tokenizer = keras_hub.models.AlbertTokenizer.from_preset(preset)
    assert tokenizer.proto == (run_dir / "tokenizer" / "spm.model").read_bytes()
    # The preset is also a complete AlbertMaskedLM (head included).
    masked_lm = keras_hub.models.AlbertMaskedLM.from_preset(preset)
    assert same_weights(masked_lm.masked_lm_head.get_weights(),
                        pretrainer.masked_lm_head.get_weights())


def test_fine_tuning_from_the_preset_starts_from_the_pretrained_weights(pretrained):
    _, run_dir = pretrained
    preset = run_dir / "export" / "preset"
    pretrainer = keras.saving.load_model(run_dir / "export" / "model.keras", compile=False)
    cfg = compose_config(*TINY, f"model.preset={preset}")
    tokenizer = build_tokenizer(cfg, [], run_dir / "finetune_tokenizer")
    assert tokenizer.proto == (run_dir / "tokenizer" / "spm.model").read_bytes()
    task = TaskSpec(kind="classification", label_names=("neg", "pos"))
    classifier = build_task_model(cfg.model, task, tokenizer.vocabulary_size())
    assert same_weights(classifier.backbone.get_weights(), pretrainer.backbone.get_weights())


def test_missing_corpus_files_fail_validation(corpus_dir):
    cfg = compose_config(*PRETRAIN, f"data.dir={corpus_dir}", "data.train_file=*.md")
    with pytest.raises(ConfigError, match=r"`data.train_file` matches no file. Received: '\*.md'"):
        validate(cfg)
    cfg = compose_config(*PRETRAIN, f"data.dir={corpus_dir}", "data.masked_lm_prob=1.5")
    with pytest.raises(ConfigError, match="`data.masked_lm_prob` must be in"):
        validate(cfg)


@pytest.mark.parametrize(("text", "error", "message"), [
    ("\n\n\n", DataError, "training corpus has no text"),
    ("\n\n".join(" ".join(d[:1]) for d in synthetic_documents(60, seed=5)), DataError,
     "documents has two or more sentences"),
])
def test_bad_corpus_fails_before_training(tmp_path, text, error, message):
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    cfg = compose_config(*PRETRAIN, f"data.dir={tmp_path}")
    with pytest.raises(error, match=message):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def test_tokenizer_without_mask_piece_fails_before_training(corpus_dir, tmp_path):
    sentences = [s for d in synthetic_documents(40, seed=6) for s in d]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(tmp_path / "nomask"), vocab_size=50,
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, control_symbols=["[CLS]", "[SEP]"],
        hard_vocab_limit=False, minloglevel=2)
    cfg = compose_config(*PRETRAIN, f"data.dir={corpus_dir}",
                         f"tokenizer.proto={tmp_path / 'nomask.model'}")
    with pytest.raises(ConfigError, match=r"lacks ALBERT's special pieces \['\[MASK\]'\]"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


PRETRAINING_RELOAD = """
import json, sys
import numpy as np, torch, transformers
sample = json.loads(sys.stdin.read())
tokenizer = transformers.AlbertTokenizer.from_pretrained(sys.argv[1])
model = transformers.AlbertForPreTraining.from_pretrained(sys.argv[1]).eval()
inputs = tokenizer(*sample["texts"], padding=True, return_tensors="pt")
assert inputs["input_ids"].tolist() == sample["token_ids"], "token ids differ"
with torch.no_grad():
    out = model(**inputs)
positions = np.array(sample["positions"])[..., None]
mlm = np.take_along_axis(out.prediction_logits.numpy(), positions, axis=1)
print(json.dumps({"mlm": float(np.abs(mlm - np.array(sample["mlm"])).max()),
                  "sop": float(np.abs(out.sop_logits.numpy() - np.array(sample["sop"])).max())}))
"""


def test_export_hf_reloads_as_albert_for_pretraining_with_both_heads(pretrained):
    pytest.importorskip("transformers", reason="the `interop` extra is not installed")
    _, run_dir = pretrained
    pretrainer = keras.saving.load_model(run_dir / "export" / "model.keras", compile=False)
    texts = (["the first one .", "another"], ["its pair .", "b"])
    preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(
        keras_hub.models.AlbertTokenizer.from_preset(str(run_dir / "export" / "preset")),
        sequence_length=32)
    inputs = {k: np.asarray(v) for k, v in preprocessor(x=texts).items()}
    length = int(inputs["padding_mask"].sum(axis=1).max())
    inputs = {k: v[:, :length] for k, v in inputs.items()}
    positions = np.array([[1, 2, 3], [1, 2, 4]])
    outputs = pretrainer({**inputs, "mask_positions": positions})
    sample = {"texts": texts, "token_ids": inputs["token_ids"].tolist(),
              "positions": positions.tolist(), "mlm": np.asarray(outputs["mlm"]).tolist(),
              "sop": np.asarray(outputs["sop"]).tolist()}
    result = subprocess.run([sys.executable, "-c", PRETRAINING_RELOAD,
                             str(run_dir / "export" / "hf")], input=json.dumps(sample),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    differences = json.loads(result.stdout.strip().splitlines()[-1])
    print("pretraining export/hf vs app: max abs diff", differences)
    assert differences["mlm"] < 1e-4 and differences["sop"] < 1e-5
