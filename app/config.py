"""Structured-config schemas (registered in Hydra's ConfigStore) and cross-field validation.

The schemas give every YAML key a type, so Hydra rejects unknown keys and wrong types while
composing. `validate(cfg)` then checks the rules that span several keys or touch the file
system, before TensorFlow does any work.
"""

from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from app.errors import ConfigError

TASKS = ("classification", "regression", "pretraining")
FORMATS = ("tsv", "csv", "jsonl")
STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
CLASSIFICATION_METRICS = ("loss", "accuracy", "f1", "mcc", "macro_f1")
REGRESSION_METRICS = ("loss", "mse", "pearson", "spearman")
PRETRAINING_METRICS = ("loss", "mlm_loss", "sop_loss", "mlm_accuracy", "mlm_perplexity",
                       "sop_accuracy")


@dataclass
class ModelConfig:
    """ALBERT shape (keras_hub.models.AlbertBackbone arguments) or a keras-hub preset."""

    _target_: str = "keras_hub.models.AlbertBackbone"
    preset: str | None = None
    num_layers: int = MISSING
    num_heads: int = MISSING
    num_groups: int = 1
    num_inner_repetitions: int = 1
    embedding_dim: int = MISSING
    hidden_dim: int = MISSING
    intermediate_dim: int = MISSING
    dropout: float = 0.0
    max_sequence_length: int = 512
    classifier_dropout: float = 0.1


@dataclass
class DataConfig:
    """Where a labelled data set lives, how to read it and what task it is."""

    name: str = MISSING
    task: str = "classification"
    format: str = "tsv"
    dir: str = MISSING
    train_file: str = "train.tsv"
    eval_file: str | None = "dev.tsv"
    text_column: str = "sentence"
    text_pair_column: str | None = None
    label_column: str = "label"
    sequence_length: int = 128
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    shuffle_buffer: int = 100_000
    # Fine-tuning: batch similar lengths together, cut padding to these lengths (null: off).
    bucket_boundaries: list[int] | None = None
    # Pretraining (task: pretraining; see app.pretraining): train_file/eval_file are globs.
    document_pattern: str | None = None   # regex of heading lines starting a document
    skip_pattern: str | None = None       # regex of lines to drop
    eval_fraction: float = 0.05           # held-out documents when eval_file is null
    max_predictions: int = 20
    masked_lm_prob: float = 0.15
    max_ngram: int = 3
    short_seq_prob: float = 0.1


@dataclass
class TokenizerConfig:
    """A SentencePiece model to use (`proto`), or how to train one on the training texts."""

    proto: str | None = None
    vocab_size: int = 1000
    model_type: str = "unigram"
    lowercase: bool = True
    character_coverage: float = 0.9995


@dataclass
class OptimizerConfig:
    """A Keras optimizer; `learning_rate` is the peak of the warmup + linear-decay schedule."""

    _target_: str = "keras.optimizers.AdamW"
    learning_rate: float = 5e-5
    weight_decay: float | None = 0.01
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-6
    global_clipnorm: float | None = 1.0
    warmup_ratio: float = 0.1
    no_weight_decay: list[str] = field(default_factory=lambda: ["gamma", "beta", "bias"])


@dataclass
class TrainerConfig:
    """How `model.fit` runs."""

    epochs: int = 3
    batch_size: int = 32
    deterministic: bool = False
    jit_compile: Any = False
    steps_per_execution: int = 1
    precision: str = "float32"
    gradient_accumulation_steps: int = 1
    checkpoint_every_n_steps: int | None = None
    keep_checkpoints: int = 2
    on_nonfinite_loss: str = "fail"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    log_every_n_steps: int = 50


@dataclass
class StrategyConfig:
    """Which tf.distribute strategy to run under."""

    name: str = "auto"
    devices: list[str] | None = None
    cpu_devices: int | None = None
    tpu_address: str | None = None


@dataclass
class PathsConfig:
    """Where data is read from and where run folders are written."""

    data_dir: str = "data"
    output_dir: str = "experiments"


@dataclass
class TrainConfig:
    """The whole run."""

    name: str = "default"
    seed: int = 42
    resume: str | None = None
    optimized_metric: str | None = None
    direction: str = "maximize"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    callbacks: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)


def resource_dir(name: str) -> str:
    """Path of a data folder shipped inside the package (`${app_resource:sample}`)."""
    return str(resources.files("app") / "resources" / name)


def hydra_subdir(resume: str | None) -> str:
    """Where Hydra saves the config: `.hydra`, or a new `.hydra/resume-<time>` on resume."""
    return f".hydra/resume-{datetime.now():%Y-%m-%d_%H-%M-%S}" if resume else ".hydra"


def register_configs() -> None:
    """Register the schema and resolvers; safe to call more than once."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("app_resource"):
        OmegaConf.register_new_resolver("app_resource", resource_dir)
    if not OmegaConf.has_resolver("resume_or"):
        # hydra.run.dir: the resumed run's own folder, else a new one.
        OmegaConf.register_new_resolver("resume_or", lambda resume, new: resume or new)
        OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir)


def task_metrics(task: str) -> tuple[str, ...]:
    """Names of the evaluation metrics reported for a task."""
    if task == "pretraining":
        return PRETRAINING_METRICS
    return CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS


def optimized_metric(cfg: DictConfig) -> str:
    """The `val_*` metric that checkpoints and sweeps optimize (task default when unset)."""
    if cfg.optimized_metric:
        return cfg.optimized_metric
    defaults = {"classification": "val_accuracy", "pretraining": "val_mlm_accuracy"}
    return defaults.get(cfg.data.task, "val_pearson")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_one_of(key: str, value: Any, allowed: tuple) -> None:
    _check(value in allowed, f"`{key}` must be one of {list(allowed)}. Received: {value!r}")


def _check_at_least(key: str, value: Any, minimum: int) -> None:
    _check(value is None or value >= minimum, f"`{key}` must be >= {minimum}. Received: {value!r}")


def _check_file(key: str, path: Path) -> None:
    _check(path.is_file(), f"`{key}` does not exist or is not a file. Received: '{path}'")


def _validate_model(model: DictConfig, sequence_length: int) -> None:
    if model.preset is not None:
        looks_like_path = any(sep in model.preset for sep in ("/", "\\")) or model.preset[0] == "."
        _check(
            not looks_like_path or Path(model.preset).is_dir(),
            f"`model.preset` looks like a local preset folder, but it does not exist. "
            f"Received: '{model.preset}'",
        )
        return
    for key in ("num_layers", "num_heads", "num_groups", "num_inner_repetitions",
                "embedding_dim", "hidden_dim", "intermediate_dim"):
        _check_at_least(f"model.{key}", model[key], 1)
    _check(
        model.num_layers % model.num_groups == 0,
        f"`model.num_layers` must be divisible by `model.num_groups`. "
        f"Received: num_layers={model.num_layers}, num_groups={model.num_groups}",
    )
    _check(
        model.hidden_dim % model.num_heads == 0,
        f"`model.hidden_dim` must be divisible by `model.num_heads`. "
        f"Received: hidden_dim={model.hidden_dim}, num_heads={model.num_heads}",
    )
    _check(
        sequence_length <= model.max_sequence_length,
        f"`data.sequence_length` must be <= `model.max_sequence_length` "
        f"({model.max_sequence_length}). Received: {sequence_length}",
    )
    _check(
        0.0 <= model.dropout < 1.0,
        f"`model.dropout` must be in [0, 1). Received: {model.dropout}",
    )


def _validate_data(data: DictConfig) -> None:
    _check_one_of("data.task", data.task, TASKS)
    if data.task == "pretraining":
        from app.pretraining.config import validate_pretraining_data

        validate_pretraining_data(data)
        return
    _check_one_of("data.format", data.format, FORMATS)
    _check(Path(data.dir).is_dir(), f"`data.dir` does not exist. Received: '{data.dir}'")
    _check(data.eval_file is not None, "`data.eval_file` must be set. Received: None")
    _check_file("data.train_file", Path(data.dir) / data.train_file)
    _check_file("data.eval_file", Path(data.dir) / data.eval_file)
    _check_at_least("data.sequence_length", data.sequence_length, 3)
    _check_at_least("data.max_train_examples", data.max_train_examples, 1)
    _check_at_least("data.max_eval_examples", data.max_eval_examples, 1)
    _check_at_least("data.shuffle_buffer", data.shuffle_buffer, 1)
    boundaries = list(data.bucket_boundaries or [])
    _check(
        boundaries == sorted(set(boundaries)) and all(0 < b < data.sequence_length
                                                      for b in boundaries),
        f"`data.bucket_boundaries` must be ascending lengths below `data.sequence_length` "
        f"({data.sequence_length}). Received: {boundaries}",
    )


def _validate_trainer(trainer: DictConfig) -> None:
    _check_at_least("trainer.batch_size", trainer.batch_size, 1)
    _check_at_least("trainer.epochs", trainer.epochs, 1)
    _check_at_least("trainer.steps_per_execution", trainer.steps_per_execution, 1)
    _check_at_least("trainer.log_every_n_steps", trainer.log_every_n_steps, 1)
    _check_one_of("trainer.jit_compile", trainer.jit_compile, (True, False, "auto"))
    _check_one_of("trainer.precision", trainer.precision, PRECISIONS)
    _check_at_least("trainer.gradient_accumulation_steps", trainer.gradient_accumulation_steps, 1)
    _check_at_least("trainer.checkpoint_every_n_steps", trainer.checkpoint_every_n_steps, 1)
    _check_at_least("trainer.keep_checkpoints", trainer.keep_checkpoints, 1)
    _check_one_of("trainer.on_nonfinite_loss", trainer.on_nonfinite_loss, ("fail", "rollback"))
    _check(
        0 < trainer.rollback_lr_factor < 1,
        f"`trainer.rollback_lr_factor` must be in (0, 1). Received: {trainer.rollback_lr_factor}",
    )


def validate(cfg: DictConfig) -> None:
    """Check cross-field rules and referenced files; raise ConfigError naming the key.

    Args:
        cfg: the composed run config (typed by `TrainConfig`).
    """
    _validate_data(cfg.data)
    _validate_model(cfg.model, cfg.data.sequence_length)
    _validate_trainer(cfg.trainer)
    _check_one_of("strategy.name", cfg.strategy.name, STRATEGIES)
    _check_at_least("strategy.cpu_devices", cfg.strategy.cpu_devices, 1)
    _check_one_of("direction", cfg.direction, ("maximize", "minimize"))
    _check_one_of("tokenizer.model_type", cfg.tokenizer.model_type, ("unigram", "bpe"))
    _check_at_least("tokenizer.vocab_size", cfg.tokenizer.vocab_size, 16)
    if cfg.tokenizer.proto is not None:
        _check_file("tokenizer.proto", Path(cfg.tokenizer.proto))
    allowed = tuple(f"val_{name}" for name in task_metrics(cfg.data.task))
    _check_one_of("optimized_metric", optimized_metric(cfg), allowed)
    _check(
        0.0 <= cfg.optimizer.warmup_ratio < 1.0,
        f"`optimizer.warmup_ratio` must be in [0, 1). Received: {cfg.optimizer.warmup_ratio}",
    )
    _check(
        cfg.optimizer.learning_rate > 0,
        f"`optimizer.learning_rate` must be > 0. Received: {cfg.optimizer.learning_rate}",
    )
