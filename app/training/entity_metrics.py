"""Entity-level metrics of token classification: seqeval's strict IOB2 scoring.

An entity counts as found only when its type and its exact span (B- then its I- tags) match, as
in the CoNLL shared tasks and published NER results; an I- tag that starts an entity is no
entity (strict mode). Token accuracy counts every word's tag.

Example:
    >>> entity_metrics([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]], ("PER",))["f1"]
    0.0
"""

import warnings

import keras
import numpy as np
from seqeval.metrics import classification_report
from seqeval.scheme import IOB2

from app.data.tagged import entity_types
from app.data.tagging import Windows, merge_windows
from app.training.collapse import CollapseCheckedEvaluation


def entity_metrics(true_tags: list[list[str]], predicted_tags: list[list[str]],
                   types: tuple[str, ...]) -> dict[str, float]:
    """Micro precision, recall and F1 over entities, token `accuracy`, and `f1_<type>` for each
    of `types` (0.0 for a type with no entity on either side).

    Args:
        true_tags: each sentence's IOB2 tags, one per word.
        predicted_tags: the predicted tags, the same shape.
        types: the entity types of the training split (keys are stable across epochs).
    """
    with warnings.catch_warnings():  # seqeval's macro mean warns on a split with no entities
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(true_tags, predicted_tags, mode="strict", scheme=IOB2,
                                       output_dict=True, zero_division=0)
    micro = report["micro avg"]
    words = sum(len(tags) for tags in true_tags)
    right = sum(t == p for true, pred in zip(true_tags, predicted_tags, strict=True)
                for t, p in zip(true, pred, strict=True))
    result = {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
              "f1": float(micro["f1-score"]), "accuracy": right / max(words, 1)}
    for name in types:
        result[f"f1_{name}"] = float(report.get(name, {}).get("f1-score", 0.0))
    return result


def word_tags(windows: Windows, outputs: np.ndarray, word_counts: list[int],
              tags: tuple[str, ...]) -> tuple[list[np.ndarray], list[list[str]]]:
    """Per sentence, the merged per-word outputs and the predicted tag names."""
    merged = merge_windows(windows, outputs, word_counts)
    return merged, [[tags[i] for i in words.argmax(axis=-1)] for words in merged]


class EntityEvaluation(CollapseCheckedEvaluation):
    """Entity precision/recall/F1 and token accuracy on the whole eval split after each epoch.

    The model tags windows of pieces; each word's tag is read at its first piece, from the
    window where it has the most context (app.data.tagging.merge_windows). The collapse check
    sees one prediction per word (a model tagging every word `O` has learned nothing).

    Args:
        dataset: the eval windows' features, in order.
        windows: the eval windows (labels, sentence and word of each first piece).
        true_tags: each eval sentence's IOB2 tags.
        task: the task (`label_names`: the tags, in id order).
        loss, on_collapse, hint, record: as CollapseCheckedEvaluation's.
    """

    def __init__(self, dataset, windows: Windows, true_tags: list[list[str]], task, loss,
                 on_collapse: str, hint: str, record: dict):
        index = {tag: i for i, tag in enumerate(task.label_names)}
        targets = np.array([index[tag] for tags in true_tags for tag in tags], "int32")
        super().__init__(dataset, targets, task, loss, on_collapse, hint, record)
        self.windows, self.true_tags = windows, true_tags
        self.types = entity_types(task.label_names)

    def measure(self, outputs: np.ndarray) -> dict[str, float]:
        loss = float(keras.ops.convert_to_numpy(self.loss(self.windows.labels, outputs)))
        merged, predicted = word_tags(self.windows, outputs,
                                      [len(tags) for tags in self.true_tags],
                                      self.task.label_names)
        self.outputs = np.concatenate(merged)  # one row per word, for the collapse check
        return {"loss": loss, **entity_metrics(self.true_tags, predicted, self.types)}
