"""Optimizers and learning-rate schedules from config."""

import keras
from omegaconf import DictConfig, OmegaConf

from app.config.instantiate import instantiate

# Keys of the `optimizer` node that are not optimizer-constructor arguments.
NON_OPTIMIZER_KEYS = ("warmup_ratio", "no_weight_decay")


@keras.saving.register_keras_serializable(package="app")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak`, then linear decay to 0 at `total_steps` (BERT/ALBERT).

    Keras' PolynomialDecay has no warmup and CosineDecay decays along a cosine, hence this.

    `factor` scales the whole schedule (a rollback lowers it).

    Example:
        >>> schedule = WarmupLinearDecay(peak=1e-4, warmup_steps=10, total_steps=100)
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, batches_per_update=1,
                 factor: float = 1.0):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.batches_per_update = batches_per_update
        self.factor = factor

    def __call__(self, step):
        # With gradient accumulation the optimizer counts batches; the schedule counts updates.
        step = keras.ops.cast(step // self.batches_per_update, "float32")
        warmup = step / max(self.warmup_steps, 1)
        decay = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        fraction = keras.ops.where(step < self.warmup_steps, warmup, decay)
        return self.peak * self.factor * keras.ops.clip(fraction, 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "batches_per_update": self.batches_per_update,
                "factor": self.factor}


def _schedule(optimizer: keras.optimizers.Optimizer) -> WarmupLinearDecay:
    """The optimizer's schedule, read through its config (a LossScaleOptimizer's inner one)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return keras.optimizers.schedules.deserialize(inner.get_config()["learning_rate"])


def learning_rate_factor(optimizer: keras.optimizers.Optimizer) -> float:
    """The factor the run's schedule is scaled by (1 unless rolled back)."""
    return _schedule(optimizer).factor


def set_learning_rate_factor(model: keras.Model, factor: float) -> None:
    """Scale the run's schedule by `factor` (of the configured one) and retrace the train step.

    Public API only: a new schedule is set as the optimizer's learning rate, which works for
    every precision (a LossScaleOptimizer passes it to its inner optimizer).
    """
    inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    inner.learning_rate = WarmupLinearDecay(**{**_schedule(model.optimizer).get_config(),
                                               "factor": factor})
    model.make_train_function(force=True)


def build_optimizer(
    optimizer: DictConfig, total_batches: int, batches_per_update: int = 1
) -> keras.optimizers.Optimizer:
    """The configured optimizer on a warmup + linear-decay schedule over the whole run.

    Weight decay skips the variables named in `optimizer.no_weight_decay` (LayerNorm's
    gamma/beta and biases by default).

    Args:
        optimizer: the `optimizer` config node.
        total_batches: training batches in the whole run.
        batches_per_update: gradient accumulation (one update every this many batches).
    """
    total_updates = max(total_batches // batches_per_update, 1)
    schedule = WarmupLinearDecay(
        peak=optimizer.learning_rate,
        warmup_steps=int(optimizer.warmup_ratio * total_updates),
        total_steps=total_updates,
        batches_per_update=batches_per_update,
    )
    args = {
        k: v for k, v in OmegaConf.to_container(optimizer, resolve=True).items()
        if k not in NON_OPTIMIZER_KEYS
    }
    accumulation = batches_per_update if batches_per_update > 1 else None
    built = instantiate(args, key="optimizer", base=keras.optimizers.Optimizer,
                        learning_rate=schedule, gradient_accumulation_steps=accumulation)
    if built.weight_decay and optimizer.no_weight_decay:
        built.exclude_from_weight_decay(var_names=list(optimizer.no_weight_decay))
    return built
