"""End-to-end tiny runs: folder contents, finite losses, task metrics, export round trip."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, compose_config, shared_data, write_splits
from omegaconf import OmegaConf
from sklearn import metrics as skm
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from app.data import synthetic
from app.evaluate import evaluate
from app.runs.layout import RunLayout
from app.runs.read import open_run
from app.runtime.strategy import build_strategy
from app.tasks import task_for
from app.tasks.inference import load_model
from app.train import train
from app.training.session import start_session

RELOAD_SCRIPT = """
import json, sys, warnings, zipfile
import h5py, keras, keras_hub, numpy as np
export = sys.argv[1]
sample = json.load(open(export + "/sample_predictions.json"))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    warnings.simplefilter("ignore", ResourceWarning)  # keras-hub leaves its .spm file open
    model = keras_hub.models.AlbertTextClassifier.from_preset(export + "/preset")
    keras.saving.load_model(export + "/model.keras", compile=False)
inputs = tuple(np.array(column) for column in sample["inputs"])
outputs = model.predict(inputs[0] if len(inputs) == 1 else inputs, verbose=0)

def saved_variables(h5):
    found = []
    h5.visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Dataset) else None)
    return found

preset_variables = []
for name in ("task", "model"):  # the head (and optimizer), the backbone
    with h5py.File(f"{export}/preset/{name}.weights.h5") as h5:
        preset_variables += saved_variables(h5)
with zipfile.ZipFile(export + "/model.keras") as archive, archive.open("model.weights.h5") as f:
    with h5py.File(f) as h5:
        keras_variables = saved_variables(h5)
print(json.dumps({"max_abs_diff": float(np.abs(outputs - np.array(sample["outputs"])).max()),
                  "labels": json.load(open(export + "/preset/labels.json")),
                  "warnings": [str(w.message) for w in caught],
                  "model_variables": len(model.weights),
                  "optimizer_variables": len(model.optimizer.variables),
                  "preset_variables": preset_variables,
                  "keras_variables": keras_variables}))
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
    # `final` is the best epoch by the optimized metric (trainer.use_best), the first of equals.
    monitor = metrics["optimized_metric"]["name"]
    scores = metrics["history"][monitor]
    best = scores.index(max(scores))
    assert metrics["final_epoch"] == metrics["best_epoch"] == best + 1
    assert metrics["history"]["val_loss"][best] == metrics["final"]["val_loss"]
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
    # The exports hold the model's variables and no optimizer state beyond what a fresh
    # keras-hub task has (its unbuilt optimizer's step and learning rate), so keras-hub and Keras
    # load them without a warning.
    assert reloaded["warnings"] == []
    for saved in (reloaded["preset_variables"], reloaded["keras_variables"]):
        optimizer = [name for name in saved if name.startswith("optimizer")]
        assert len(optimizer) == reloaded["optimizer_variables"] == 2
        assert len(saved) - len(optimizer) == reloaded["model_variables"]


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


def initial_backbone_weights(cfg, run_dir: Path) -> list[np.ndarray]:
    """The backbone weights of the model a run builds, before any training step, through the
    flow's own steps (app.train: strategy, session, data, tokenizer, pipelines, model)."""
    strategy = build_strategy(cfg.strategy)
    start_session(cfg)
    layout = RunLayout(run_dir)
    task = task_for(cfg)
    task.read_data(layout)
    task.build_tokenizer(layout)
    task.build_pipelines(tf.distribute.get_strategy())
    with strategy.scope():
        model = task.build_model()
    return model.backbone.get_weights()


@pytest.mark.slow
def test_fine_tune_from_local_preset_starts_from_its_weights(tmp_path, sentiment_dir):
    _, first = run_tiny(tmp_path, sentiment_dir, "trainer.epochs=1")
    preset = first / "export" / "preset"
    common = [*TINY, "data=tsv", f"data.dir={sentiment_dir}", "trainer.epochs=1"]
    cfg = compose_config(*common, f"model.preset={preset}")
    trained = keras_hub.models.AlbertBackbone.from_preset(str(preset)).get_weights()
    start = initial_backbone_weights(cfg, tmp_path / "from_preset")
    assert len(start) == len(trained)
    assert all(np.array_equal(a, b) for a, b in zip(trained, start, strict=True))
    # A random init of the same shape, seed and tokenizer (the first run's own start) differs
    # from the trained preset, so the equality above holds only if the preset is loaded.
    fresh = initial_backbone_weights(
        compose_config(*common, f"tokenizer.proto={first / 'tokenizer/spm.model'}"),
        tmp_path / "fresh")
    assert [w.shape for w in fresh] == [w.shape for w in trained]
    assert not all(np.array_equal(a, b) for a, b in zip(trained, fresh, strict=True))
    metrics = train(cfg, tmp_path / "second")
    assert math.isfinite(metrics["final"]["val_loss"])
    assert (tmp_path / "second/tokenizer/spm.model").read_bytes() == (
        first / "tokenizer/spm.model").read_bytes()


# Three topics, each told by its own words. BPE keeps the words whole (a unigram model trained on
# so few sentences splits them into characters), so a tiny model learns them in a few epochs.
TOPICS = {
    "weather": ("rain", "snow", "sunny", "storm", "cloudy", "wind"),
    "sport": ("goal", "match", "team", "score", "coach", "league"),
    "food": ("bread", "soup", "cheese", "pasta", "salad", "cake"),
}
TOPIC_RUN = ["trainer.epochs=3", "trainer.batch_size=8", "optimizer.learning_rate=5e-3",
             "model.dropout=0", "tokenizer.model_type=bpe"]
TOPIC_TRAIN_SIZE = 384


def topic_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(sentence, label): two words of the label's topic among filler words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(list(TOPICS))
        first, second = rng.sample(TOPICS[label], 2)
        rows.append((f"{rng.choice(synthetic.OPENERS)}the {first} and the {second} .", label))
    return rows


def read_tsv(path: Path) -> list[tuple[str, str]]:
    """The (sentence, label) rows of a file written by `synthetic.write_tsv`."""
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def topic_run(tmp_path_factory) -> tuple[dict, Path]:
    """A finished 3-epoch run on three string labels, openable like a command's run (with the
    composed config saved as `.hydra/config.yaml`, as Hydra does)."""
    root = tmp_path_factory.mktemp("topics")
    data = write_splits(root / "data", ("sentence", "label"), topic_rows, TOPIC_TRAIN_SIZE,
                       seed=11)
    cfg = compose_config(*TINY, "data=tsv", f"data.dir={data}", *TOPIC_RUN)
    run_dir = root / "run"
    metrics = train(cfg, run_dir)
    hydra_config = RunLayout(run_dir).hydra_config
    hydra_config.parent.mkdir()
    OmegaConf.save(cfg, hydra_config)
    return metrics, run_dir


def test_multiclass_string_labels_on_synthetic_topics(topic_run):
    metrics, run_dir = topic_run
    data = run_dir.parent / "data"
    labels = json.loads((run_dir / "labels.json").read_text())
    assert labels == ["food", "sport", "weather"]  # sorted, not in order of appearance
    assert list(dict.fromkeys(label for _, label in read_tsv(data / "train.tsv"))) != labels
    assert json.loads((run_dir / "export/preset/labels.json").read_text()) == labels
    recorded = json.loads((run_dir / "metrics.json").read_text())
    assert set(recorded["final"]) == {"val_loss", "val_accuracy", "val_macro_f1"}
    assert len(recorded["history"]["val_macro_f1"]) == len(recorded["history"]["val_accuracy"]) == 3
    assert recorded["optimized_metric"]["name"] == "val_accuracy"
    # The exported model's predictions on the whole dev split.
    rows = read_tsv(data / "dev.tsv")
    model = load_model(open_run(run_dir))
    outputs = model.predict(np.array([text for text, _ in rows], dtype=object), verbose=0)
    assert outputs.shape == (len(rows), 3)
    predicted = outputs.argmax(axis=-1)
    targets = np.array([labels.index(label) for _, label in rows])
    assert len(set(predicted.tolist())) > 1
    final = recorded["final"]
    assert final["val_accuracy"] == pytest.approx(skm.accuracy_score(targets, predicted), abs=1e-6)
    assert final["val_macro_f1"] == pytest.approx(
        skm.f1_score(targets, predicted, average="macro"), abs=1e-6)
    # Chance is 1/3 and the largest class of dev under 0.4: above one half, the model has learned
    # (tiny models often get two topics right before the third, at 2/3).
    assert np.bincount(targets).max() / len(targets) < 0.4
    assert final["val_accuracy"] > 0.5


def test_best_checkpoint_holds_the_best_epoch(topic_run):
    metrics, run_dir = topic_run
    history = metrics["history"]
    assert metrics["optimized_metric"]["direction"] == "maximize"
    monitor = metrics["optimized_metric"]["name"]
    scores, losses = history[monitor], history["val_loss"]
    assert len(scores) == 3
    assert len(set(scores)) > 1, "the metric must move across epochs for this test to tell"
    # Keras keeps a checkpoint only on a strict improvement: the first epoch with the best score.
    best_epoch = int(np.argmax(scores))
    # Each epoch's val_loss tells it apart from the others, well beyond the tolerance below.
    assert all(abs(losses[e] - losses[best_epoch]) > 2e-4 for e in range(3) if e != best_epoch)
    best = evaluate(run_dir, checkpoint="best", progress=False)
    assert best["num_examples"] == TOPIC_TRAIN_SIZE // 4
    assert best["metrics"][monitor.removeprefix("val_")] == pytest.approx(scores[best_epoch],
                                                                          abs=1e-6)
    assert best["metrics"]["loss"] == pytest.approx(losses[best_epoch], abs=1e-5)
    last = evaluate(run_dir, checkpoint="last", progress=False)
    assert last["metrics"]["loss"] == pytest.approx(losses[-1], abs=1e-5)
    assert last["metrics"][monitor.removeprefix("val_")] == pytest.approx(scores[-1], abs=1e-6)
    run = open_run(run_dir)
    best_weights = load_model(run, "best").get_weights()
    last_weights = load_model(run, "last").get_weights()
    same = all(np.array_equal(a, b) for a, b in zip(best_weights, last_weights, strict=True))
    assert same == (best_epoch == len(scores) - 1)


@pytest.mark.parametrize("optimizer", ["adam", "lamb"])
def test_other_optimizers_train(tmp_path, sentiment_dir, optimizer):
    metrics, _ = run_tiny(tmp_path, sentiment_dir, f"optimizer={optimizer}", "trainer.epochs=1",
                          "data.max_train_examples=64")
    assert math.isfinite(metrics["history"]["loss"][0])
