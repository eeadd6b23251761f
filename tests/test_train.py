"""End-to-end tiny runs: folder contents, finite losses, task metrics, export round trip."""

import json
import math
import subprocess
import sys
from pathlib import Path

import keras_hub
import numpy as np
import pytest
from conftest import TINY, compose_config, shared_data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from app.train import train

RELOAD_SCRIPT = """
import json, sys
import keras_hub, numpy as np
export = sys.argv[1]
sample = json.load(open(export + "/sample_predictions.json"))
model = keras_hub.models.AlbertTextClassifier.from_preset(export + "/preset")
inputs = tuple(np.array(column) for column in sample["inputs"])
outputs = model.predict(inputs[0] if len(inputs) == 1 else inputs, verbose=0)
print(json.dumps({"max_abs_diff": float(np.abs(outputs - np.array(sample["outputs"])).max()),
                  "labels": json.load(open(export + "/preset/labels.json"))}))
"""


def run_tiny(tmp_path: Path, data_dir: Path, *overrides: str) -> tuple[dict, Path]:
    cfg = compose_config(*TINY, "data=tsv", f"data.dir={data_dir}", *overrides)
    run_dir = tmp_path / "run"
    return train(cfg, run_dir), run_dir


def tensorboard_tags(log_dir: Path) -> set[str]:
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return set(accumulator.Tags()["tensors"])


def reload_in_fresh_process(export_dir: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(export_dir)],
                            capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_completed_run(run_dir: Path, metrics: dict, metric_keys: set[str], epochs: int = 2):
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    for name in ("env.json", "metrics.json", "labels.json", "tokenizer/spm.model",
                 "checkpoints/best.weights.h5", "checkpoints/last.weights.h5",
                 "export/model.keras", "export/preset/config.json",
                 "export/preset/labels.json", "export/sample_predictions.json"):
        assert (run_dir / name).is_file(), name
    env = json.loads((run_dir / "env.json").read_text())
    assert {"packages", "git", "hardware", "strategy", "seed", "command"} <= set(env)
    assert env["packages"]["keras-hub"] == keras_hub.__version__
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert set(metrics["final"]) == metric_keys
    assert all(math.isfinite(v) for v in metrics["final"].values())
    assert len(metrics["history"]["loss"]) == epochs
    assert all(math.isfinite(v) for v in metrics["history"]["loss"])
    assert metrics["history"]["val_loss"][-1] == metrics["final"]["val_loss"]
    assert {"epoch_loss", "epoch_learning_rate"} <= tensorboard_tags(run_dir / "tensorboard/train")
    assert "epoch_loss" in tensorboard_tags(run_dir / "tensorboard/validation")
    hparams_tags = tensorboard_tags(run_dir / "tensorboard")
    assert "_hparams_/session_start_info" in hparams_tags
    assert {f"final/{name}" for name in metric_keys} <= hparams_tags


def test_single_sentence_classification(tmp_path, sentiment_dir):
    metrics, run_dir = run_tiny(tmp_path, sentiment_dir, "trainer.epochs=3")
    assert_completed_run(run_dir, metrics, {"val_loss", "val_accuracy", "val_f1", "val_mcc"}, 3)
    assert metrics["optimized_metric"]["name"] == "val_accuracy"
    assert json.loads((run_dir / "labels.json").read_text()) == ["negative", "positive"]
    reloaded = reload_in_fresh_process(run_dir / "export")
    assert reloaded["labels"] == ["negative", "positive"]
    assert reloaded["max_abs_diff"] < 1e-5


def test_sentence_pair_classification(tmp_path, pair_dir):
    metrics, run_dir = run_tiny(tmp_path, pair_dir, "data.text_column=sentence1",
                                "data.text_pair_column=sentence2")
    assert_completed_run(run_dir, metrics, {"val_loss", "val_accuracy", "val_f1", "val_mcc"})
    sample = json.loads((run_dir / "export/sample_predictions.json").read_text())
    assert len(sample["inputs"]) == 2
    assert reload_in_fresh_process(run_dir / "export")["max_abs_diff"] < 1e-5


def test_regression(tmp_path, regression_dir):
    metrics, run_dir = run_tiny(tmp_path, regression_dir, "data.task=regression",
                                "data.label_column=score")
    assert_completed_run(run_dir, metrics,
                         {"val_loss", "val_mse", "val_pearson", "val_spearman"})
    assert metrics["optimized_metric"]["name"] == "val_pearson"
    assert np.isclose(metrics["final"]["val_loss"], metrics["final"]["val_mse"], rtol=1e-4)
    assert json.loads((run_dir / "labels.json").read_text()) == []


def test_multiclass_string_labels_on_trec(tmp_path):
    trec = shared_data("trec")
    metrics, run_dir = run_tiny(tmp_path, trec, "data=trec", "data.max_train_examples=300",
                                "data.max_eval_examples=100", "trainer.epochs=1")
    assert set(metrics["final"]) == {"val_loss", "val_accuracy", "val_macro_f1"}
    labels = json.loads((run_dir / "labels.json").read_text())
    assert set(labels) <= {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"} and len(labels) >= 5


def test_fine_tune_from_local_preset_starts_from_its_weights(tmp_path, sentiment_dir):
    _, first = run_tiny(tmp_path, sentiment_dir, "trainer.epochs=1")
    preset = first / "export" / "preset"
    cfg = compose_config(*TINY, "data=tsv", f"data.dir={sentiment_dir}", f"model.preset={preset}",
                         "trainer.epochs=1")
    from app.models.classifier import build_backbone
    expected = keras_hub.models.AlbertBackbone.from_preset(str(preset)).get_weights()
    loaded = build_backbone(cfg.model, vocabulary_size=expected[0].shape[0])
    assert all(np.array_equal(a, b) for a, b in zip(expected, loaded.get_weights(), strict=True))
    metrics = train(cfg, tmp_path / "second")
    assert math.isfinite(metrics["final"]["val_loss"])
    assert (tmp_path / "second/tokenizer/spm.model").read_bytes() == (
        first / "tokenizer/spm.model").read_bytes()


@pytest.mark.parametrize("optimizer", ["adam", "lamb"])
def test_other_optimizers_train(tmp_path, sentiment_dir, optimizer):
    metrics, _ = run_tiny(tmp_path, sentiment_dir, f"optimizer={optimizer}", "trainer.epochs=1",
                          "data.max_train_examples=64")
    assert math.isfinite(metrics["history"]["loss"][0])
