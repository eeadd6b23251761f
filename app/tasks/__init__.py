"""Tasks: where data, models and training meet; the one place that dispatches on `data.task`."""

from omegaconf import DictConfig

from app.tasks.base import Task, TrainingData
from app.tasks.fine_tuning import FineTuning
from app.tasks.pretraining import Pretraining

__all__ = ["FineTuning", "Pretraining", "Task", "TrainingData", "task_for"]


def task_for(cfg: DictConfig) -> Task:
    """The task a run config asks for: Pretraining for `data.task=pretraining`, else FineTuning."""
    return Pretraining(cfg) if cfg.data.task == "pretraining" else FineTuning(cfg)
