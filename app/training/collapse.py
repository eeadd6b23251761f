"""A run that learns nothing says so: after each epoch's evaluation, a model that predicts one
class for the whole eval split (a multi-label model: one label set, possibly empty; for
regression: nearly the same score for every example) is
reported in one log line with its likely causes, and in metrics.json (`collapsed`).

Example:
    >>> collapse(TaskSpec("classification", ("a", "b")), np.array([0, 1]), np.zeros((2, 2)))
    {'kind': 'one_class', 'predicted': 'a', 'eval_share': 0.5}
"""

import logging

import numpy as np

from app.data.task import TaskSpec
from app.training.callbacks import FullEvaluation
from app.training.metrics import multilabel_predictions, multilabel_thresholds

log = logging.getLogger(__name__)

# Regression: collapsed when the predictions' standard deviation is below this share of the
# targets' (a model that learned nothing predicts about the mean for every input).
SPREAD_RATIO = 1e-2
# Labels count as imbalanced when the largest class holds over this many times 1 / classes.
IMBALANCE = 1.5


def collapse(task: TaskSpec, targets: np.ndarray, outputs: np.ndarray) -> dict | None:
    """What collapsed in these predictions, or None when they vary.

    Args:
        task: the task (classification, multi-label or regression).
        targets: class ids, multi-hot rows or scores of the eval split.
        outputs: the model's logits (classification) or scores (regression).

    Returns:
        `{"kind": "one_class", "predicted": label, "eval_share": share of the eval split with
        that label}` (multi-label: the labels joined by the task's separator, "" for none, and
        the share with exactly that label set), `{"kind": "constant", "prediction_std",
        "target_std"}`, or None. An eval split whose targets do not vary cannot tell, and
        gives None.
    """
    if task.kind == "multilabel":
        return _one_label_set(task, targets, outputs)
    if task.kind == "regression":
        spread, target_spread = float(np.std(outputs)), float(np.std(targets))
        if target_spread > 0 and spread <= SPREAD_RATIO * target_spread:
            return {"kind": "constant", "prediction_std": spread, "target_std": target_spread}
        return None
    predicted = np.unique(outputs.argmax(axis=-1))
    if len(predicted) > 1 or len(np.unique(targets)) < 2:
        return None
    return {"kind": "one_class", "predicted": task.label_names[int(predicted[0])],
            "eval_share": float(np.mean(targets == predicted[0]))}


def _one_label_set(task: TaskSpec, targets: np.ndarray, outputs: np.ndarray) -> dict | None:
    """A multi-label model that predicts the same label set (at the thresholds its metrics
    use) for every example: `one_class`, its `predicted` labels joined by the separator."""
    predicted = multilabel_predictions(outputs, multilabel_thresholds(task, targets, outputs))
    truth = np.asarray(targets).astype(bool)
    if len(np.unique(predicted, axis=0)) > 1 or len(np.unique(truth, axis=0)) < 2:
        return None
    names = [name for name, on in zip(task.label_names, predicted[0], strict=True) if on]
    return {"kind": "one_class", "predicted": task.label_separator.join(names),
            "eval_share": float(np.mean((truth == predicted[0]).all(axis=1)))}


def causes(learning_rate: float, vocabulary_size: int,
           class_counts: np.ndarray | None = None) -> str:
    """The likely causes of a collapse, with the keys that change them; imbalanced labels
    among them when the largest training class is over IMBALANCE times a uniform share."""
    text = (f"learning rate too high for this model and data (optimizer.learning_rate="
            f"{learning_rate:g}: try a third of it), vocabulary unsuited to the text "
            f"({vocabulary_size} pieces: tokenizer.vocab_size)")
    if class_counts is not None:
        largest = class_counts.max() / class_counts.sum()
        if largest > IMBALANCE / len(class_counts):
            text += (f", imbalanced labels (largest training class {largest:.0%}: "
                     f"data.class_weight=balanced)")
    return text


class CollapseCheckedEvaluation(FullEvaluation):
    """FullEvaluation that also checks each epoch's predictions for a collapse (see `collapse`).

    A collapsed epoch logs one warning line with the likely causes and is recorded in `record`
    (a dict the caller puts into metrics.json) under `collapsed`: the first collapsed epoch
    (1-based), every collapsed epoch, what collapsed first, and whether training stopped. With
    `on_collapse="stop"` training stops after that epoch (its checkpoints are still written).
    The record is also the callback's `collapsed`, which training states keep across a resume
    (app.training.checkpoints.CallbackMemory).

    Args:
        dataset, targets, task, loss: as FullEvaluation's.
        on_collapse: `warn` or `stop`.
        hint: the likely causes, for the log line (see `causes`).
        record: where `collapsed` is written.
    """

    def __init__(self, dataset, targets, task, loss, on_collapse: str, hint: str, record: dict):
        super().__init__(dataset, targets, task, loss)
        self.on_collapse = on_collapse
        self.hint = hint
        self.record = record
        self.collapsed: dict | None = None

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        found = collapse(self.task, self.targets, self.outputs)
        if found is None:
            if self.collapsed:  # an earlier epoch's, restored by a resume
                self.record["collapsed"] = self.collapsed
            return
        stop = self.on_collapse == "stop"
        previous = self.collapsed
        epochs = [*(previous["epochs"] if previous else []), epoch + 1]
        self.collapsed = self.record["collapsed"] = {
            **(previous or found), "epoch": epochs[0], "epochs": epochs, "stopped": stop}
        what = (f"predicts {found['predicted']!r} for every eval example (its share of the eval "
                f"split: {found['eval_share']:.3f})" if found["kind"] == "one_class" else
                f"predicts nearly the same score for every eval example (std "
                f"{found['prediction_std']:.3g} vs the targets' {found['target_std']:.3g})")
        log.warning("Epoch %d: the model %s: it has learned nothing%s. Likely causes: %s",
                    epoch + 1, what, "; stopping (trainer.on_collapse=stop)" if stop else "",
                    self.hint)
        if stop:
            self.model.stop_training = True
