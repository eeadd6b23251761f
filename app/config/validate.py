"""Cross-field validation of a run config: every rule, fine-tuning's and pretraining's.

Runs before TensorFlow does any work; each failure is a ConfigError naming the key, what was
received and what is expected.
"""

import re
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from app.data.pretraining.corpus import expand_files
from app.data.text.word_units import SEGMENTERS
from app.errors import ConfigError
from app.runtime.cluster import no_cluster_hint, resolve_cluster

TASKS = ("classification", "regression", "token_classification", "multilabel", "pretraining")
FORMATS = ("tsv", "csv", "jsonl")
TAGGED_FORMATS = ("conll", "jsonl")
TAG_SCHEMES = ("iob2", "iob1", "bioes", "bmes")
TOKENIZER_KINDS = ("sentencepiece", "wordpiece")
ACTIVATIONS = ("gelu_new", "gelu", "relu")
STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
CLASS_WEIGHTS = (None, "balanced")
PADDINGS = (None, "longest", "buckets")
ON_COLLAPSE = ("warn", "stop")
CLASSIFICATION_METRICS = ("loss", "accuracy", "f1", "mcc", "macro_f1")
REGRESSION_METRICS = ("loss", "mse", "pearson", "spearman")
# Entity-level (seqeval, strict IOB2) precision, recall and F1, and token accuracy.
TOKEN_CLASSIFICATION_METRICS = ("loss", "f1", "precision", "recall", "accuracy")
MULTILABEL_METRICS = ("loss", "micro_f1", "macro_f1", "exact_match")
PRETRAINING_METRICS = ("loss", "mlm_loss", "sop_loss", "mlm_accuracy", "mlm_perplexity",
                       "sop_accuracy")


def task_metrics(task: str) -> tuple[str, ...]:
    """Names of the evaluation metrics reported for a task."""
    return {"pretraining": PRETRAINING_METRICS, "classification": CLASSIFICATION_METRICS,
            "token_classification": TOKEN_CLASSIFICATION_METRICS,
            "multilabel": MULTILABEL_METRICS}.get(task, REGRESSION_METRICS)


def optimized_metric(cfg: DictConfig) -> str:
    """The `val_*` metric that checkpoints and sweeps optimize (task default when unset)."""
    if cfg.optimized_metric:
        return cfg.optimized_metric
    defaults = {"classification": "val_accuracy", "pretraining": "val_mlm_accuracy",
                "token_classification": "val_f1", "multilabel": "val_micro_f1"}
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


def _validate_model(model: DictConfig, sequence_length: int | None) -> None:
    for key in ("learning_rate", "preset_learning_rate"):
        _check(model[key] > 0, f"`model.{key}` must be > 0. Received: {model[key]}")
    _check_one_of("model.activation", model.activation, ACTIVATIONS)
    _check_at_least("model.lora_rank", model.lora_rank, 1)
    if model.tokenizer is not None:
        _check(Path(model.tokenizer).is_dir(),
               f"`model.tokenizer` must be a folder holding vocab.txt or spiece.model. "
               f"Received: '{model.tokenizer}'")
    if model.preset is not None:
        remote = "://" in model.preset  # hf://org/name, kaggle://owner/model/...
        looks_like_path = any(sep in model.preset for sep in ("/", "\\")) or model.preset[0] == "."
        _check(
            remote or not looks_like_path or Path(model.preset).is_dir(),
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
        sequence_length is None or sequence_length <= model.max_sequence_length,
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
        _validate_pretraining_data(data)
        return
    if data.task == "token_classification":
        _check_one_of("data.format", data.format, TAGGED_FORMATS)
        _check_one_of("data.tag_scheme", data.tag_scheme, TAG_SCHEMES)
        _check_at_least("data.window_stride", data.window_stride, 1)
        _check(data.window_stride is None or data.sequence_length is None
               or data.window_stride <= data.sequence_length - 2,
               f"`data.window_stride` must be <= `data.sequence_length` - 2 (the pieces of one "
               f"window). Received: {data.window_stride}")
        _check(data.text_pair_column is None, "`data.text_pair_column` must be null for "
               f"token_classification. Received: {data.text_pair_column!r}")
    else:
        _check_one_of("data.format", data.format, FORMATS)
    if data.task == "multilabel":
        _check(data.label_separator != "", "`data.label_separator` must not be empty")
        _check(0.0 < data.threshold < 1.0,
               f"`data.threshold` must be in (0, 1). Received: {data.threshold}")
    _check(Path(data.dir).is_dir(), f"`data.dir` does not exist. Received: '{data.dir}'")
    _check(data.eval_file is not None, "`data.eval_file` must be set. Received: None")
    _check_file("data.train_file", Path(data.dir) / data.train_file)
    _check_file("data.eval_file", Path(data.dir) / data.eval_file)
    _check_at_least("data.sequence_length", data.sequence_length, 3)
    _check_at_least("data.max_train_examples", data.max_train_examples, 1)
    _check_at_least("data.max_eval_examples", data.max_eval_examples, 1)
    _check_at_least("data.shuffle_buffer", data.shuffle_buffer, 1)
    _check_one_of("data.padding", data.padding, PADDINGS)
    boundaries = list(data.bucket_boundaries or [])
    # A null length is chosen later; boundaries not below it are dropped then (choose_lengths).
    longest = data.sequence_length or float("inf")
    _check(
        boundaries == sorted(set(boundaries)) and all(0 < b < longest for b in boundaries),
        f"`data.bucket_boundaries` must be ascending lengths below `data.sequence_length` "
        f"({data.sequence_length}). Received: {boundaries}",
    )
    _check_one_of("data.class_weight", data.class_weight, CLASS_WEIGHTS)
    _check(data.class_weight is None or data.task == "classification",
           f"`data.class_weight` applies to classification only; `data.task` is {data.task!r}. "
           f"Received: {data.class_weight!r}")
    _check(data.positive_label is None or data.task == "classification",
           f"`data.positive_label` applies to classification only; `data.task` is "
           f"{data.task!r}. Received: {data.positive_label!r}")


def _check_regex(key: str, pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as error:
        _check(False, f"`{key}` is not a valid regular expression ({error}). "
                      f"Received: {pattern!r}")


def _validate_prepared(data: DictConfig) -> None:
    _check(Path(data.prepared, "manifest.json").is_file(),
           f"`data.prepared` must be a folder written by albert-prepare (with a manifest.json). "
           f"Received: '{data.prepared}'")
    _check_at_least("data.shard_group_size", data.shard_group_size, 1)
    _check(data.max_train_examples is None and data.max_eval_examples is None,
           "`data.max_train_examples` and `data.max_eval_examples` must be null with "
           "`data.prepared` (prepare a smaller corpus instead)")
    _check(data.whole_word_segmenter is None,
           "`data.whole_word_segmenter` applies to in-memory corpora only: set it to null with "
           "`data.prepared` (the prepared shards hold plain token ids)")


def _validate_pretraining_data(data: DictConfig) -> None:
    _check(data.sequence_length is not None,
           "`data.sequence_length` must be set for pretraining (pairs are packed to it). "
           "Received: None")
    if data.prepared:
        _validate_prepared(data)
        return
    _check(Path(data.dir).is_dir(), f"`data.dir` does not exist. Received: '{data.dir}'")
    expand_files(data.dir, data.train_file, "data.train_file")
    if data.eval_file:
        expand_files(data.dir, data.eval_file, "data.eval_file")
    else:
        _check(0.0 < data.eval_fraction < 1.0,
               f"`data.eval_fraction` must be in (0, 1) when `data.eval_file` is null "
               f"(the held-out share of documents). Received: {data.eval_fraction}")
    _check_at_least("data.sequence_length", data.sequence_length, 8)
    _check_at_least("data.max_predictions", data.max_predictions, 1)
    _check_at_least("data.max_ngram", data.max_ngram, 1)
    if data.whole_word_segmenter is not None:
        _check_one_of("data.whole_word_segmenter", data.whole_word_segmenter, SEGMENTERS)
    _check_at_least("data.max_train_examples", data.max_train_examples, 1)
    _check_at_least("data.max_eval_examples", data.max_eval_examples, 1)
    _check_at_least("data.shuffle_buffer", data.shuffle_buffer, 1)
    _check(0.0 < data.masked_lm_prob < 1.0,
           f"`data.masked_lm_prob` must be in (0, 1). Received: {data.masked_lm_prob}")
    _check(0.0 <= data.short_seq_prob <= 1.0,
           f"`data.short_seq_prob` must be in [0, 1]. Received: {data.short_seq_prob}")
    _check(data.max_predictions <= data.sequence_length,
           f"`data.max_predictions` must be <= `data.sequence_length` "
           f"({data.sequence_length}). Received: {data.max_predictions}")
    _check_regex("data.document_pattern", data.document_pattern)
    _check_regex("data.skip_pattern", data.skip_pattern)


def _validate_strategy(strategy: DictConfig) -> None:
    _check_one_of("strategy.name", strategy.name, STRATEGIES)
    _check_at_least("strategy.cpu_devices", strategy.cpu_devices, 1)
    _check(0 < strategy.port < 65536, f"`strategy.port` must be a TCP port (1-65535). "
                                      f"Received: {strategy.port}")
    _check_at_least("strategy.timeout_seconds", strategy.timeout_seconds, 1)
    _check_at_least("strategy.start_timeout_seconds", strategy.start_timeout_seconds, 1)
    if strategy.name == "auto":
        return
    try:
        cluster = resolve_cluster(strategy.port)
    except ConfigError:
        if strategy.name == "multi_worker":
            raise
        cluster = None  # another strategy trains alone; SLURM's step layout does not matter
    if strategy.name == "multi_worker":
        _check(cluster is not None, f"`strategy.name` is 'multi_worker' but the environment "
                                    f"names no cluster: {no_cluster_hint()}")
    elif cluster and len(cluster.workers) > 1:
        raise ConfigError(f"{len(cluster.workers)} processes were started as one {cluster.source} "
                          f"job (this is worker {cluster.index}) but `strategy.name` is "
                          f"{strategy.name!r}, which trains each alone: set strategy=multi_worker "
                          f"(or auto), or start one process")


def _validate_trainer(trainer: DictConfig) -> None:
    _check_at_least("trainer.batch_size", trainer.batch_size, 1)
    _check_at_least("trainer.epochs", trainer.epochs, 1)
    _check_at_least("trainer.steps_per_execution", trainer.steps_per_execution, 1)
    _check_at_least("trainer.log_every_n_steps", trainer.log_every_n_steps, 1)
    _check_one_of("trainer.jit_compile", trainer.jit_compile, (True, False, "auto"))
    _check_one_of("trainer.precision", trainer.precision, PRECISIONS)
    _check_at_least("trainer.gradient_accumulation_steps", trainer.gradient_accumulation_steps, 1)
    _check_at_least("trainer.checkpoint_every_n_steps", trainer.checkpoint_every_n_steps, 1)
    _check(trainer.checkpoint_every_minutes is None or trainer.checkpoint_every_minutes > 0,
           f"`trainer.checkpoint_every_minutes` must be > 0 or null. "
           f"Received: {trainer.checkpoint_every_minutes}")
    _check_at_least("trainer.keep_checkpoints", trainer.keep_checkpoints, 1)
    _check_one_of("trainer.on_nonfinite_loss", trainer.on_nonfinite_loss, ("fail", "rollback"))
    _check_one_of("trainer.on_collapse", trainer.on_collapse, ON_COLLAPSE)
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
    _check(cfg.model.lora_rank is None or cfg.data.task != "pretraining",
           f"`model.lora_rank` applies to fine-tuning tasks (pretraining's masked-LM head is tied "
           f"to the token embedding LoRA freezes). Received: lora_rank={cfg.model.lora_rank} "
           f"with data.task=pretraining (set model.lora_rank=null)")
    _validate_trainer(cfg.trainer)
    _validate_strategy(cfg.strategy)
    _check_one_of("direction", cfg.direction, ("maximize", "minimize"))
    _check(cfg.logger.get("mlflow") is None or find_spec("mlflow") is not None,
           '`logger=mlflow` needs MLflow, which is not installed: '
           'pip install "albert-trainer[mlflow]"')
    _check_one_of("tokenizer.model_type", cfg.tokenizer.model_type, ("unigram", "bpe"))
    _check_at_least("tokenizer.vocab_size", cfg.tokenizer.vocab_size, 16)
    _check_one_of("tokenizer.kind", cfg.tokenizer.kind, TOKENIZER_KINDS)
    _check(not (cfg.data.get("prepared") and cfg.tokenizer.kind == "wordpiece"),
           "`tokenizer.kind=wordpiece` with `data.prepared`: albert-prepare writes SentencePiece "
           "pairs only; pretrain a WordPiece model from the corpus itself (data=text_corpus)")
    if cfg.tokenizer.proto is not None:
        _check_file("tokenizer.proto", Path(cfg.tokenizer.proto))
    if cfg.tokenizer.vocab is not None:
        _check_file("tokenizer.vocab", Path(cfg.tokenizer.vocab))
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
