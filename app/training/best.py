"""Report the best, not the last: the epoch whose model a run's final metrics and export are.

Like transformers' `load_best_model_at_end`: with `trainer.use_best` (default), a run whose best
epoch by the optimized metric is not its last reloads the best checkpoint
(`callbacks.best_checkpoint`) before exporting, and reports that epoch's metrics.
"""

import logging
import math
from pathlib import Path

import keras
from omegaconf import DictConfig

from app.config.validate import optimized_metric

log = logging.getLogger(__name__)


def best_epoch(scores: list[float], direction: str) -> int:
    """The 0-based epoch with the best score: the first of equal ones, as ModelCheckpoint keeps
    (it saves on a strict improvement only); non-finite scores never count."""
    sign = 1.0 if direction == "maximize" else -1.0
    finite = [(sign * score, -epoch) for epoch, score in enumerate(scores) if math.isfinite(score)]
    return -max(finite)[1] if finite else len(scores) - 1


def restore_best(model: keras.Model, history: dict[str, list[float]], cfg: DictConfig,
                 run_dir: Path) -> tuple[int, int]:
    """Load the best checkpoint into `model` when `trainer.use_best` and the best epoch is not
    the last; return the 0-based epoch the model now is, and the best epoch.

    Without a best checkpoint (`callbacks.best_checkpoint=null`, or no file) the model stays
    the last epoch's.
    """
    monitor = optimized_metric(cfg)
    scores = history.get(monitor, [])
    last = len(scores) - 1
    best = best_epoch(scores, cfg.direction)
    node = cfg.callbacks.get("best_checkpoint")
    weights = run_dir / node.filepath if node is not None else None
    if not cfg.trainer.use_best or best == last:
        return last, best
    if weights is None or not weights.is_file():
        log.info("Epoch %d was the best by %s, but there is no best checkpoint: reporting and "
                 "exporting the last epoch (%d)", best + 1, monitor, last + 1)
        return last, best
    model.load_weights(weights)
    log.info("Reporting and exporting epoch %d of %d, the best by %s (%.4f; the last had "
             "%.4f): %s (trainer.use_best=false for the last)", best + 1, last + 1, monitor,
             scores[best], scores[last], weights.name)
    return best, best
