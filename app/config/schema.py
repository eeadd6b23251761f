"""Structured-config schemas of every command, registered in Hydra's ConfigStore.

The schemas give every YAML key a type, so Hydra rejects unknown keys and wrong types while
composing; app.config.validate then checks the rules that span several keys.
"""

import os
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from app.runtime.cluster import is_chief, task_index


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
    # The feed-forward activation, by transformers' `hidden_act` names: gelu_new (keras-hub's
    # tanh GELU), gelu (exact) or relu (several Chinese ALBERTs). A preset's own value wins.
    activation: str = "gelu_new"
    # A folder holding the tokenizer of `preset` when the checkpoint ships none
    # (e.g. bert-base-chinese's vocab.txt for ckiplab's Chinese ALBERTs).
    tokenizer: str | None = None
    classifier_dropout: float = 0.1
    # LoRA fine-tuning (app.models.lora): adapters of this rank on the attention's query and
    # value projections, the rest of the backbone frozen, the head trained; null: off.
    lora_rank: int | None = None
    # Peak learning rates measured for this shape (the optimizer's default follows them, see
    # `peak_learning_rate`): from random init, and fine-tuning a pretrained `preset`.
    learning_rate: float = 5e-4
    preset_learning_rate: float = 1e-4


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
    # Fine-tuning, null: chosen from the training split (99% of examples whole, a multiple of 8,
    # at most the model's position table) and saved in the run's config.yaml. Pretraining: set.
    sequence_length: int | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    shuffle_buffer: int = 100_000
    # Fine-tuning: `longest`: batches of similar lengths, each cut to its longest example;
    # `buckets`: cut to `bucket_boundaries`. Null: `buckets` under XLA (trainer.jit_compile
    # true or auto), when bucket_boundaries is set and for multi-label and token
    # classification (labels that follow length); else `longest`.
    padding: str | None = None
    # `buckets` padding: cut each batch to the smallest of these lengths holding it (null:
    # chosen from the training split's lengths, to pad least; []: off, every batch padded to
    # sequence_length).
    bucket_boundaries: list[int] | None = None
    # Imbalanced labels: `balanced` weighs each training example by n / (classes * n_class).
    class_weight: str | None = None
    # The positive class of binary F1 (null: `1` of 0/1 labels, or positive/true/yes; else the
    # minority class of the whole training file).
    positive_label: str | None = None
    # Token classification (task: token_classification; format conll or jsonl, see
    # app.data.tagged): CoNLL columns by index; JSONL lists in text_column / label_column.
    token_column: int = 0
    tag_column: int = -1
    tag_scheme: str = "iob2"              # iob2 | iob1 | bioes | bmes, converted to iob2
    window_stride: int | None = None      # pieces between window starts (null: half a window)
    # Multi-label classification (task: multilabel): labels in one column split on this.
    label_separator: str = ","
    threshold: float = 0.5                # a label is predicted at probability >= threshold
    tune_thresholds: bool = False         # per-label thresholds tuned on the eval split
    # Pretraining (task: pretraining; see app.data.pretraining): train_file/eval_file are globs.
    document_pattern: str | None = None   # regex of heading lines starting a document
    document_per_line: bool = False       # each line is a document (one review per line)
    skip_pattern: str | None = None       # regex of lines to drop
    eval_fraction: float = 0.05           # held-out documents when eval_file is null
    max_predictions: int = 20
    masked_lm_prob: float = 0.15
    max_ngram: int = 3
    whole_word_segmenter: str | None = None  # jieba: mask Chinese words whole (in-memory corpora)
    short_seq_prob: float = 0.1
    random_b_sop_weight: float = 1.0      # SOP loss weight of pairs with a random B (ALBERT: 1)
    # Pretraining from a folder written by albert-prepare (`data=prepared`, see
    # app.data.pretraining.shards): the folder, shard files read together, the hash check.
    prepared: str | None = None
    shard_group_size: int = 8
    verify_shards: bool = True


@dataclass
class TokenizerConfig:
    """A tokenizer to use (`proto` or `vocab`), or how to train one on the training texts."""

    kind: str = "sentencepiece"  # sentencepiece | wordpiece (BERT's, as Chinese ALBERTs use)
    proto: str | None = None     # a SentencePiece .model (kind: sentencepiece)
    vocab: str | None = None     # a WordPiece vocab.txt (kind: wordpiece)
    vocab_size: int | None = None  # null: chosen from the training texts (app.tasks.tokenizer)
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
    checkpoint_every_minutes: float | None = 5.0
    keep_checkpoints: int = 2
    on_nonfinite_loss: str = "fail"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    log_every_n_steps: int = 50
    on_collapse: str = "warn"
    use_best: bool = True


@dataclass
class StrategyConfig:
    """Which tf.distribute strategy to run under."""

    name: str = "auto"
    devices: list[str] | None = None
    cpu_devices: int | None = None
    tpu_address: str | None = None
    # multi_worker (see conf/strategy/multi_worker.yaml and docs/cluster.md).
    port: int = 12345
    timeout_seconds: int = 30
    start_timeout_seconds: int = 900


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


@dataclass
class InferenceDataConfig:
    """How evaluate and predict read their input; null keeps the run's training setting."""

    format: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None


@dataclass
class InferenceConfig:
    """What evaluate and predict share: the run, its checkpoint and how inputs are read."""

    run: str = MISSING
    checkpoint: str = "export"
    batch_size: int = 256
    bucketing: bool = True
    progress: bool = True
    data: InferenceDataConfig = field(default_factory=InferenceDataConfig)


@dataclass
class EvaluateConfig(InferenceConfig):
    """`albert-evaluate`: task metrics of a finished run on a labelled file."""

    input: str | None = None
    split: str | None = None


@dataclass
class PredictConfig(InferenceConfig):
    """`albert-predict`: predictions of a finished run on new texts."""

    input: str = MISSING
    output: str = MISSING
    output_format: str | None = None


@dataclass
class ReportConfig:
    """`albert-report`: one table of every run under a folder."""

    input: str = MISSING
    csv: str | None = None
    png: str | None = None
    plot: bool = True


@dataclass
class SentencePieceOptions:
    """How a SentencePiece model is trained (albert-tokenizer, and albert-prepare without one)."""

    vocab_size: int = 16000
    model_type: str = "unigram"
    lowercase: bool = True
    character_coverage: float = 0.9995
    input_sentence_size: int = 1_000_000


@dataclass
class TokenizerCommandConfig(SentencePieceOptions):
    """`albert-tokenizer`: a SentencePiece model with ALBERT's special pieces (or a WordPiece
    vocabulary), from text files."""

    kind: str = "sentencepiece"
    input: str = MISSING
    output: str = MISSING
    holdout_every: int = 100


@dataclass
class PrepareDataConfig:
    """How `albert-prepare` reads documents and packs pairs (the training `data` keys)."""

    document_pattern: str | None = None
    document_per_line: bool = False
    skip_pattern: str | None = None
    text_column: str = "sentence"          # the column read from `*.tsv` corpus files
    eval_fraction: float = 0.05
    sequence_length: int = 128
    short_seq_prob: float = 0.1


@dataclass
class PrepareTokenizerConfig(SentencePieceOptions):
    """A SentencePiece model to use (`proto`), or how to train one on a sample."""

    proto: str | None = None


@dataclass
class PrepareConfig:
    """`albert-prepare`: raw text -> a folder of sharded, pre-tokenized sentence pairs."""

    input: str = MISSING
    output: str = MISSING
    num_proc: int = 1
    shard_size_mb: float = 16.0
    seed: int = 42
    data: PrepareDataConfig = field(default_factory=PrepareDataConfig)
    tokenizer: PrepareTokenizerConfig = field(default_factory=PrepareTokenizerConfig)


@dataclass
class BenchOptions:
    """The bench's own knobs (`bench.<name>=<value>`)."""

    windows: int = 5
    window_seconds: float = 4.0
    min_window_steps: int = 2
    matmul_size: int = 2048
    matmul_seconds: float = 2.0
    out: str | None = None
    predict_copies: int = 20
    predict_batch_size: int | None = None


@dataclass
class BenchConfig(TrainConfig):
    """`albert-bench`: the training config plus the bench's own options."""

    mode: str = "train"
    bench: BenchOptions = field(default_factory=BenchOptions)


SCHEMAS = {"train": TrainConfig, "evaluate": EvaluateConfig, "predict": PredictConfig,
           "report": ReportConfig, "tokenizer": TokenizerCommandConfig, "bench": BenchConfig,
           "prepare": PrepareConfig}


def resource_dir(name: str) -> str:
    """Path of a data folder shipped inside the package (`${app_resource:sample}`)."""
    return str(resources.files("app") / "resources" / name)


def conf_help(command: str) -> str:
    """The keys of `conf/<command>.yaml` with their comments, for the command's `--help`.

    The YAML is the one place a key is described: its lines between the defaults list and the
    `hydra:` section are shown as they are.
    """
    lines, skipping = [], False
    text = (resources.files("app.conf") / f"{command}.yaml").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            skipping = line.split(":")[0] in ("defaults", "hydra")
        if not skipping and not line.startswith("# @package"):
            lines.append(f"  {line}" if line else "")
    # `$$`: Hydra fills the help template with string.Template, where `$` starts a placeholder.
    return "\n".join(lines).strip("\n").replace("$", "$$")


def peak_learning_rate(preset: str | None, scratch: float, pretrained: float) -> float:
    """The model's measured peak learning rate: `pretrained` with a `model.preset`, else
    `scratch` (`${peak_learning_rate:${model.preset},${model.learning_rate},...}`)."""
    return scratch if preset is None else pretrained


def resume_or(resume: str | None, new: str) -> str:
    """hydra.run.dir: the resumed run's own folder, else a new one (a non-chief worker's logs
    never go into the chief's folder, even on resume)."""
    return resume if resume and is_chief() else new


def job_subdir(num: int, resume: str | None) -> str:
    """hydra.sweep.subdir: the job's number; a resumed job's own run folder (an absolute path
    replaces the sweep folder); another task of a multi-worker job logs in `<num>_task<k>`."""
    if not is_chief():
        return f"{num}_task{task_index()}"
    return os.path.abspath(resume) if resume else str(num)


def hydra_subdir(resume: str | None) -> str:
    """Where Hydra saves the config: `.hydra`, or a new `.hydra/resume-<time>` on resume."""
    return f".hydra/resume-{datetime.now():%Y-%m-%d_%H-%M-%S}" if resume else ".hydra"


def register_configs() -> None:
    """Register the schema and resolvers; safe to call more than once."""
    for command, schema in SCHEMAS.items():
        # A group, so that bench.yaml can compose train.yaml with its own schema in place.
        ConfigStore.instance().store(group="schema", name=command, node=schema,
                                     package="_global_")
    if not OmegaConf.has_resolver("conf_help"):
        OmegaConf.register_new_resolver("conf_help", conf_help)
    if not OmegaConf.has_resolver("app_resource"):
        OmegaConf.register_new_resolver("app_resource", resource_dir)
    if not OmegaConf.has_resolver("peak_learning_rate"):
        OmegaConf.register_new_resolver("peak_learning_rate", peak_learning_rate)
    if not OmegaConf.has_resolver("resume_or"):
        OmegaConf.register_new_resolver("resume_or", resume_or)
        OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir)
    if not OmegaConf.has_resolver("job_subdir"):
        OmegaConf.register_new_resolver("job_subdir", job_subdir)
