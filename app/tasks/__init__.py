"""Tasks: where data, models and training meet; the one place that dispatches on `data.task`."""

from omegaconf import DictConfig

from app.tasks.base import Task, TrainingData
from app.tasks.fine_tuning import FineTuning
from app.tasks.pretraining import Pretraining
from app.tasks.token_classification import TokenClassification

__all__ = ["FineTuning", "Pretraining", "Task", "TokenClassification", "TrainingData",
           "task_for"]

TASKS = {"pretraining": Pretraining, "token_classification": TokenClassification}


def task_for(cfg: DictConfig) -> Task:
    """The task a run config asks for: Pretraining, TokenClassification, else FineTuning
    (classification, regression, multilabel)."""
    return TASKS.get(cfg.data.task, FineTuning)(cfg)
