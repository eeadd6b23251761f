"""A run that learns nothing says so (collapse), and a run reports its best epoch, not its last."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, compose_config, write_splits
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import TOPIC_RUN, TOPIC_TRAIN_SIZE, topic_rows

from app.data import synthetic
from app.data.task import TaskSpec
from app.evaluate import evaluate
from app.runs.layout import RunLayout
from app.runs.read import open_run
from app.tasks.inference import load_model
from app.train import train
from app.training.best import best_epoch, restore_best
from app.training.checkpoints import CallbackMemory
from app.training.collapse import CollapseCheckedEvaluation, causes, collapse

BINARY = TaskSpec("classification", ("neg", "pos"))


def test_one_predicted_class_is_a_collapse():
    targets = np.array([0, 1, 1, 0, 1])
    logits = np.tile([0.2, 1.5], (5, 1)) + np.linspace(0, 0.5, 5)[:, None]  # argmax 1 everywhere
    assert collapse(BINARY, targets, logits) == {"kind": "one_class", "predicted": "pos",
                                                 "eval_share": 0.6}
    logits[0] = [2.0, 0.0]
    assert collapse(BINARY, targets, logits) is None
    # An eval split of one class cannot tell a collapsed model from a right one.
    assert collapse(BINARY, np.ones(5, "int32"), np.tile([0.0, 1.0], (5, 1))) is None


def test_constant_regression_scores_are_a_collapse():
    task = TaskSpec("regression")
    targets = np.array([0.0, 1.0, 2.0, 3.0, 4.0], "float32")
    flat = 2.0 + 1e-3 * np.array([[1.0], [-1.0], [0.5], [0.0], [-0.5]])
    found = collapse(task, targets, flat)
    assert found["kind"] == "constant" and found["prediction_std"] < 0.01 * found["target_std"]
    assert collapse(task, targets, targets[:, None] * 0.1) is None  # small but varying: learned


def test_causes_name_imbalance_only_when_labels_are_imbalanced():
    assert "data.class_weight=balanced" in causes(1e-3, 500, np.array([80, 20]))
    assert "largest training class 80%" in causes(1e-3, 500, np.array([80, 20]))
    assert "data.class_weight" not in causes(1e-3, 500, np.array([55, 45]))
    assert "optimizer.learning_rate=0.001" in causes(1e-3, 500)


def write_sentiment(root: Path) -> Path:
    return write_splits(root, ("sentence", "label"), synthetic.sentiment_rows, 192, seed=1)


def test_the_collapse_record_survives_a_resume():
    task = TaskSpec("classification", ("a", "b"))

    def evaluation(record: dict) -> CollapseCheckedEvaluation:
        return CollapseCheckedEvaluation(None, np.array([0, 1]), task, None, "warn", "", record)

    before = evaluation({})
    before.collapsed = {"kind": "one_class", "predicted": "a", "eval_share": 0.5, "epoch": 1,
                        "epochs": [1], "stopped": False}
    memory = CallbackMemory([before])
    memory.on_epoch_end(0)
    saved = json.loads(json.dumps(memory.taken))  # as a training state's meta.json holds it
    after = evaluation({})
    CallbackMemory([after], saved).on_train_begin()
    assert after.collapsed == before.collapsed


def test_a_huge_learning_rate_collapses_and_stops(tmp_path, caplog):
    data = write_sentiment(tmp_path / "data")
    cfg = compose_config(*TINY, "data=tsv", f"data.dir={data}", "optimizer.learning_rate=0.3",
                         "trainer.epochs=3", "trainer.on_collapse=stop")
    run_dir = tmp_path / "run"
    metrics = train(cfg, run_dir)
    collapsed = metrics["collapsed"]
    assert collapsed["kind"] == "one_class" and collapsed["epoch"] == 1
    assert collapsed["epochs"] == [1] and collapsed["stopped"] is True
    assert len(metrics["history"]["loss"]) == 1  # stopped after the first epoch
    assert json.loads((run_dir / "metrics.json").read_text())["collapsed"] == collapsed
    lines = [r.getMessage() for r in caplog.records if r.name == "app.training.collapse"]
    assert len(lines) == 1 and "optimizer.learning_rate=0.3" in lines[0]
    assert "tokenizer.vocab_size" in lines[0] and "stopping (trainer.on_collapse=stop)" in lines[0]
    assert "data.class_weight" not in lines[0]  # 53% of two classes is not imbalanced
    # What the detector saw is what the exported model does: one class for all of dev.
    dev = [line.split("\t")[0] for line in (data / "dev.tsv").read_text().splitlines()[1:]]
    hydra = RunLayout(run_dir).hydra_config
    hydra.parent.mkdir()
    OmegaConf.save(cfg, hydra)
    outputs = load_model(open_run(run_dir)).predict(np.array(dev, dtype=object), verbose=0)
    assert len(set(outputs.argmax(axis=-1).tolist())) == 1
    assert collapsed["eval_share"] == metrics["final"]["val_accuracy"]


@pytest.fixture(scope="module")
def best_first_run(tmp_path_factory) -> tuple[dict, Path]:
    """A run that learns (three topics), whose best epoch is forced to be the first: the
    optimized metric is val_loss, maximized, and the loss falls epoch after epoch."""
    root = tmp_path_factory.mktemp("best")
    data = write_splits(root / "data", ("sentence", "label"), topic_rows, TOPIC_TRAIN_SIZE,
                        seed=11)
    cfg = compose_config(*TINY, "data=tsv", f"data.dir={data}", *TOPIC_RUN,
                         "optimized_metric=val_loss", "direction=maximize")
    run_dir = root / "run"
    metrics = train(cfg, run_dir)
    hydra = RunLayout(run_dir).hydra_config
    hydra.parent.mkdir()
    OmegaConf.save(cfg, hydra)
    return metrics, run_dir


def test_a_model_that_learns_is_not_a_collapse(best_first_run):
    metrics, _ = best_first_run
    assert "collapsed" not in metrics
    assert max(metrics["history"]["val_accuracy"]) > 0.5  # three classes: it learned


def test_final_metrics_and_export_are_the_best_epoch(best_first_run):
    metrics, run_dir = best_first_run
    losses = metrics["history"]["val_loss"]
    assert losses[0] > losses[1] > losses[2], "the loss must fall for the best to be epoch 1"
    assert metrics["best_epoch"] == metrics["final_epoch"] == 1
    assert metrics["final"] == {name: values[0] for name, values in metrics["history"].items()
                                if name.startswith("val_")}
    assert metrics["optimized_metric"]["value"] == losses[0]
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))  # TensorBoard's HParams tab
    accumulator.Reload()
    final_loss = tf.make_ndarray(accumulator.Tensors("final/val_loss")[-1].tensor_proto)
    assert final_loss == pytest.approx(losses[0])
    # The export is the best checkpoint's model, not the last epoch's.
    exported = evaluate(run_dir, checkpoint="export", progress=False)["metrics"]
    assert exported["loss"] == pytest.approx(losses[0], abs=1e-5)
    assert abs(exported["loss"] - losses[-1]) > 1e-2
    run = open_run(run_dir)
    export_weights = load_model(run).get_weights()
    for name, same in (("best", True), ("last", False)):
        weights = load_model(run, name).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(export_weights, weights,
                                                        strict=True)) == same


def test_use_best_false_keeps_the_last_epoch(best_first_run):
    metrics, run_dir = best_first_run
    cfg = compose_config(*TINY, "data=tsv", f"data.dir={run_dir.parent / 'data'}",
                         "optimized_metric=val_loss", "direction=maximize",
                         "trainer.use_best=false")
    model = load_model(open_run(run_dir), "last")
    before = model.get_weights()
    assert restore_best(model, metrics["history"], cfg, run_dir) == (2, 0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


@pytest.mark.parametrize("scores,direction,expected", [
    ([0.5, 0.7, 0.7], "maximize", 1),          # the first of equal scores, as Keras keeps
    ([0.5, 0.4, 0.6], "minimize", 1),
    ([float("nan"), 0.3, 0.2], "maximize", 1),  # a non-finite score never counts
])
def test_best_epoch(scores, direction, expected):
    assert best_epoch(scores, direction) == expected
