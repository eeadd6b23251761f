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

    Example:
        >>> schedule = WarmupLinearDecay(peak=1e-4, warmup_steps=10, total_steps=100)
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, batches_per_update=1):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.batches_per_update = batches_per_update

    def __call__(self, step):
        # With gradient accumulation the optimizer counts batches; the schedule counts updates.
        step = keras.ops.cast(step // self.batches_per_update, "float32")
        warmup = step / max(self.warmup_steps, 1)
        decay = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        fraction = keras.ops.where(step < self.warmup_steps, warmup, decay)
        return self.peak * keras.ops.clip(fraction, 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "batches_per_update": self.batches_per_update}


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
        k: v for k, v in OmegaConf.to_container(optimizer).items() if k not in NON_OPTIMIZER_KEYS
    }
    accumulation = batches_per_update if batches_per_update > 1 else None
    built = instantiate(args, key="optimizer", base=keras.optimizers.Optimizer,
                        learning_rate=schedule, gradient_accumulation_steps=accumulation)
    if built.weight_decay and optimizer.no_weight_decay:
        built.exclude_from_weight_decay(var_names=list(optimizer.no_weight_decay))
    return built
