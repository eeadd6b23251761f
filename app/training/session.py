"""Per-run hygiene: every run (and every sweep job in one process) starts from a clean slate."""

import keras
import tensorflow as tf
from omegaconf import DictConfig


def start_session(cfg: DictConfig) -> None:
    """Fresh Keras session, seeds, dtype policy and, when asked, op determinism.

    Args:
        cfg: the run config (`seed`, `trainer.precision`, `trainer.deterministic`).
    """
    keras.utils.clear_session(free_memory=True)
    keras.config.set_dtype_policy(cfg.trainer.precision)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.trainer.deterministic:
        tf.config.experimental.enable_op_determinism()
