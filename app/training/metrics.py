"""Task metrics on a whole evaluation split, from scikit-learn and SciPy."""

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from app.data.task import TaskSpec


def evaluate_predictions(task: TaskSpec, targets: np.ndarray, outputs: np.ndarray) -> dict:
    """Metrics of model outputs (logits, or scores for regression) against targets.

    Classification: accuracy always; F1 (of `task.positive_label`) and Matthews correlation
    for two classes, macro-F1 for more. Regression: MSE, Pearson and Spearman correlation.

    Example:
        >>> evaluate_predictions(TaskSpec("classification", ("0", "1")), y, logits)["accuracy"]
    """
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
