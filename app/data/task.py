"""Task specs: which columns hold the inputs, and how labels become targets."""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from app.data.readers import Table, read_table
from app.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """A classification task (with its label names), a multi-label task or a regression task.

    `positive_label` is the class binary F1 is computed for (None: the second label).
    Multi-label (`kind="multilabel"`): a text has any non-empty subset of `label_names`; a
    TSV/CSV label value is split on `label_separator`, a JSONL one may be a list of strings;
    label k is predicted where sigmoid(logit k) >= `thresholds[k]` (`tune_thresholds`: tuned per
    label on the split being evaluated, see app.training.metrics.multilabel_thresholds).
    """

    kind: str
    label_names: tuple[str, ...] = ()
    positive_label: str | None = None
    label_separator: str = ","
    thresholds: tuple[float, ...] = ()
    tune_thresholds: bool = False

    @property
    def num_outputs(self) -> int:
        return len(self.label_names) if self.kind in ("classification", "multilabel") else 1

    @property
    def positive_index(self) -> int:
        """The class id of `positive_label` (1 when unset)."""
        return 1 if self.positive_label is None else self.label_names.index(self.positive_label)

    def targets(self, table: Table, column: str) -> np.ndarray:
        """Encode a label column: class ids, float scores for regression, or multi-hot float32
        rows [examples, labels] for multi-label."""
        values = table.columns[column]
        if self.kind == "multilabel":
            return self._multi_hot(label_sets(table, column, self.label_separator), table,
                                   column)
        if self.kind == "regression":
            return np.array([_to_float(v, table, i, column) for i, v in enumerate(values)],
                            dtype="float32")
        index = {name: i for i, name in enumerate(self.label_names)}
        for i, value in enumerate(values):
            if value not in index:
                raise DataError(
                    f"{table.path}:{table.lines[i]}: label {value!r} in column {column!r} never "
                    f"occurs in the training split; expected one of {list(self.label_names)}"
                )
        return np.array([index[v] for v in values], dtype="int32")

    def _multi_hot(self, sets: list[list[str]], table: Table, column: str) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.label_names)}
        targets = np.zeros((len(sets), len(self.label_names)), dtype="float32")
        for i, labels in enumerate(sets):
            for label in labels:
                if label not in index:
                    raise DataError(
                        f"{table.path}:{table.lines[i]}: label {label!r} in column {column!r} "
                        f"never occurs in the training split; expected labels among "
                        f"{list(self.label_names)}")
                targets[i, index[label]] = 1.0
        return targets


def label_sets(table: Table, column: str, separator: str) -> list[list[str]]:
    """The labels of each row of a multi-label column, spaces around each label stripped.

    TSV/CSV: the value split on `separator` ("sports, politics"); JSONL: a list of strings
    (["sports", "politics"]) or a string split the same way. An empty label ("a,,b", [""]) is a
    DataError naming file and line; a label repeated in one row counts once.
    """
    sets = []
    for i, value in enumerate(table.columns[column]):
        items = value if isinstance(value, list) else value.split(separator)
        labels = [item.strip() for item in items]
        if "" in labels:
            raise DataError(
                f"{table.path}:{table.lines[i]}: an empty label in column {column!r} (received "
                f"{value!r}); a multi-label row needs one or more non-empty labels, separated by "
                f"{separator!r} (data.label_separator) or as a JSON list of strings")
        sets.append(list(dict.fromkeys(labels)))
    return sets


def _to_float(value: str, table: Table, i: int, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not np.isfinite(number):
        raise DataError(
            f"{table.path}:{table.lines[i]}: regression target {value!r} in column {column!r} "
            f"is not a finite number"
        )
    return number


def label_vocabulary(values: list[str]) -> tuple[str, ...]:
    """Sorted distinct labels; integer labels sort numerically so "2" keeps id 2."""
    distinct = set(values)
    if all(v.lstrip("-").isdigit() for v in distinct):
        return tuple(sorted(distinct, key=int))
    return tuple(sorted(distinct))


@dataclass(frozen=True)
class Split:
    """Inputs (one or two text arrays) and targets of one data split."""

    texts: tuple[np.ndarray, ...]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def features(self):
        """What the preprocessor takes: one text array, or a tuple of two for pairs."""
        return self.texts[0] if len(self.texts) == 1 else self.texts


def text_columns(data: DictConfig) -> list[str]:
    """The configured input columns: one, or two for sentence pairs."""
    return [data.text_column] + ([data.text_pair_column] if data.text_pair_column else [])


def _read_split(data: DictConfig, filename: str) -> Table:
    return read_table(Path(data.dir) / filename, data.format,
                      text_columns(data) + [data.label_column])


def _head(table: Table, limit: int | None) -> Table:
    """The first `limit` rows of `table` (all of them when None)."""
    if limit is None or limit >= len(table):
        return table
    return Table(table.path, {name: values[:limit] for name, values in table.columns.items()},
                 table.lines[:limit])


def _to_split(table: Table, data: DictConfig, task: TaskSpec) -> Split:
    texts = tuple(np.array(table.columns[c], dtype=object) for c in text_columns(data))
    return Split(texts=texts, targets=task.targets(table, data.label_column))


def multilabel_task(data: DictConfig, table: Table) -> TaskSpec:
    """The multi-label task of a training table: its sorted distinct labels (two or more),
    `data.threshold` for each, `data.tune_thresholds`."""
    sets = label_sets(table, data.label_column, data.label_separator)
    labels = label_vocabulary([label for labels in sets for label in labels])
    if len(labels) < 2:
        raise DataError(f"{table.path}: column {data.label_column!r} has a single label "
                        f"{labels[0]!r}; multi-label classification needs at least two")
    return TaskSpec(kind="multilabel", label_names=labels, label_separator=data.label_separator,
                    thresholds=(float(data.threshold),) * len(labels),
                    tune_thresholds=bool(data.tune_thresholds))


def load_task_data(data: DictConfig) -> tuple[TaskSpec, Split, Split]:
    """Read the train and eval splits named by `data` and derive the task from train.

    Args:
        data: the `data` config node.

    Returns:
        The task spec, the training split and the evaluation split.
    """
    whole_train = _read_split(data, data.train_file)
    train_table = _head(whole_train, data.max_train_examples)
    eval_table = _head(_read_split(data, data.eval_file), data.max_eval_examples)
    if data.task == "multilabel":
        task = multilabel_task(data, train_table)
        return task, _to_split(train_table, data, task), _to_split(eval_table, data, task)
    labels = ()
    if data.task == "classification":
        labels = label_vocabulary(train_table.columns[data.label_column])
        if len(labels) < 2:
            raise DataError(
                f"{train_table.path}: column {data.label_column!r} has a single label "
                f"{labels[0]!r}; classification needs at least two"
            )
    if len(labels) == 2 or data.positive_label is not None:
        positive = _positive_label(data, whole_train, labels)
        task = TaskSpec(kind=data.task, label_names=labels, positive_label=positive)
    else:
        task = TaskSpec(kind=data.task, label_names=labels)
    return task, _to_split(train_table, data, task), _to_split(eval_table, data, task)


# Label names that mean "the positive class" of a binary task (compared lowercased).
POSITIVE_NAMES = ("1", "positive", "pos", "true", "yes")


def _positive_label(data: DictConfig, table: Table, labels: tuple[str, ...]) -> str:
    """The class binary F1 is reported for, by the usual convention (GLUE, scikit-learn):
    `data.positive_label`, checked against the labels; else `1` of labels `0`/`1` (or
    `positive`, `true`, `yes`); else the minority class of the whole training file (not of a
    `data.max_train_examples` sample, so the choice never depends on the cap), logged."""
    if data.positive_label is None:
        named = [label for label in labels if label.lower() in POSITIVE_NAMES]
        if len(named) == 1:
            return named[0]
        column = table.columns[data.label_column]
        counts = {label: column.count(label) for label in labels}
        minority = min(reversed(labels), key=counts.get)  # the second label on a tie
        log.info("Binary F1 of the minority label %r (%d of %d training examples; labels %s "
                 "name no positive class: set data.positive_label to choose)", minority,
                 counts[minority], len(column), list(labels))
        return minority
    if len(labels) != 2:
        raise DataError(f"{table.path}: `data.positive_label` applies to two-class tasks; column "
                        f"{data.label_column!r} has {len(labels)} labels {list(labels)}. "
                        f"Received: {data.positive_label!r}")
    if data.positive_label not in labels:
        raise DataError(f"{table.path}: `data.positive_label` {data.positive_label!r} is not a "
                        f"label of column {data.label_column!r}; expected one of {list(labels)}")
    return data.positive_label


def class_weights(task: TaskSpec, targets: np.ndarray) -> np.ndarray:
    """`balanced` weights, one per class: n / (classes x examples of the class), as
    scikit-learn's `compute_class_weight("balanced")`; they average 1 over the examples."""
    counts = np.bincount(targets, minlength=task.num_outputs)
    return (len(targets) / (task.num_outputs * counts)).astype("float32")
