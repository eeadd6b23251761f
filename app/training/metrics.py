"""Task metrics on a whole evaluation split, from scikit-learn and SciPy; multi-label thresholds."""

import numpy as np
from scipy import special, stats
from sklearn import metrics as skm

from app.data.task import TaskSpec

# The thresholds a multi-label tuning tries for each label: 0.05, 0.10, ..., 0.95.
THRESHOLD_GRID = np.round(np.arange(1, 20) * 0.05, 2)
DEFAULT_THRESHOLD = 0.5


def evaluate_predictions(task: TaskSpec, targets: np.ndarray, outputs: np.ndarray) -> dict:
    """Metrics of model outputs (logits, or scores for regression) against targets.

    Classification: accuracy always; F1 (of `task.positive_label`) and Matthews correlation
    for two classes, macro-F1 for more. Multi-label (multi-hot targets, a label predicted
    where its sigmoid reaches its threshold, see `multilabel_thresholds`): micro- and macro-F1,
    exact match (the share of examples whose predicted label set is exactly right) and
    `f1_<label>` per label. Regression: MSE, Pearson and Spearman correlation.

    Example:
        >>> evaluate_predictions(TaskSpec("classification", ("0", "1")), y, logits)["accuracy"]
    """
    if task.kind == "multilabel":
        predicted = multilabel_predictions(outputs, multilabel_thresholds(task, targets, outputs))
        return multilabel_metrics(task.label_names, targets, predicted)
    if task.kind == "regression":
        scores = outputs.reshape(-1)
        return {
            "mse": float(np.mean((scores - targets) ** 2)),
            "pearson": _correlation(stats.pearsonr, targets, scores),
            "spearman": _correlation(stats.spearmanr, targets, scores),
        }
    predicted = outputs.argmax(axis=-1)
    labels = list(range(task.num_outputs))
    result = {"accuracy": float(skm.accuracy_score(targets, predicted))}
    if task.num_outputs == 2:
        result["f1"] = float(skm.f1_score(targets, predicted, labels=labels,
                                          pos_label=task.positive_index, zero_division=0))
        result["mcc"] = float(skm.matthews_corrcoef(targets, predicted))
    else:
        result["macro_f1"] = float(
            skm.f1_score(targets, predicted, labels=labels, average="macro", zero_division=0)
        )
    return result


def _correlation(method, targets: np.ndarray, scores: np.ndarray) -> float:
    """A correlation coefficient; 0.0 when either side is constant (undefined)."""
    if np.ptp(targets) == 0 or np.ptp(scores) == 0:
        return 0.0
    return float(method(targets, scores)[0])


def multilabel_metrics(label_names, targets: np.ndarray, predicted: np.ndarray) -> dict:
    """Micro-F1, macro-F1, exact match and `f1_<label>` of multi-hot predictions."""
    truth, predicted = np.asarray(targets).astype("int32"), np.asarray(predicted).astype("int32")
    per_label = skm.f1_score(truth, predicted, average=None, zero_division=0)
    return {
        "micro_f1": float(skm.f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_f1": float(skm.f1_score(truth, predicted, average="macro", zero_division=0)),
        "exact_match": float(skm.accuracy_score(truth, predicted)),
        **{f"f1_{name}": float(f1) for name, f1 in zip(label_names, per_label, strict=True)},
    }


def multilabel_predictions(outputs: np.ndarray, thresholds) -> np.ndarray:
    """Booleans [examples, labels]: sigmoid(logit) >= the label's threshold."""
    return special.expit(np.asarray(outputs, dtype="float32")) >= np.asarray(thresholds)


def multilabel_thresholds(task: TaskSpec, targets: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """The thresholds a multi-label evaluation uses: the task's (one per label, 0.5 when it
    has none), or with `task.tune_thresholds` those `tune_thresholds` finds on these targets."""
    if task.tune_thresholds:
        return tune_thresholds(targets, special.expit(np.asarray(outputs, dtype="float32")))
    return np.asarray(task.thresholds or [DEFAULT_THRESHOLD] * task.num_outputs, dtype="float64")


def tune_thresholds(targets: np.ndarray, probabilities: np.ndarray,
                    grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Per label, the threshold of `grid` that maximizes that label's F1 on these examples;
    of equal F1s the one closest to 0.5 (then the lower). A label with no positive example
    and none predicted has F1 0 at every threshold, so it keeps 0.5 where the grid has it.

    Example:
        >>> tune_thresholds(np.array([[1], [0]]), np.array([[0.3], [0.2]]))
        array([0.3])
    """
    grid = np.asarray(grid, dtype="float64")
    truth = np.asarray(targets).astype(bool)
    # [grid, examples, labels]: which examples each threshold predicts, per label.
    predicted = np.asarray(probabilities)[None] >= grid[:, None, None]
    true_positive = (predicted & truth[None]).sum(axis=1)
    false_positive = (predicted & ~truth[None]).sum(axis=1)
    false_negative = truth.sum(axis=0)[None] - true_positive
    denominator = 2 * true_positive + false_positive + false_negative
    f1 = np.where(denominator > 0, 2 * true_positive / np.maximum(denominator, 1), 0.0)
    best = []
    for label in range(f1.shape[1]):
        # lexsort: the last key sorts first: highest F1, then nearest 0.5, then lowest.
        order = np.lexsort((grid, np.abs(grid - DEFAULT_THRESHOLD), -f1[:, label]))
        best.append(grid[order[0]])
    return np.array(best, dtype="float64")
