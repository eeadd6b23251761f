"""The run folder's contract: every path in it, named once (as keras-hub's preset_utils does).

    experiments/<name>/<YYYY-MM-DD_HH-MM-SS>/
        .hydra/config.yaml, overrides.yaml   the config as composed and the command-line overrides
        config.yaml                          the config resolved, paths absolute or in the folder
        status.json env.json labels.json history.json metrics.json eval_<split>.json
        history.csv                          one row per epoch (logger=csv)
        mlflow_run.json                      the run's MLflow run: id and store (logger=mlflow)
        thresholds.json                      a multi-label run's threshold per label
        lengths.json                         the sequence length and buckets chosen from the data
        tokenizer/spm.model                  the SentencePiece model the run used
        tokenizer/normalization.json         its text normalization, where it has one
        checkpoints/best.weights.h5 last.weights.h5 state/step-<N>/
        tensorboard/
        export/preset/ model.keras saved_model/ sample_predictions.json
        export/preset/labels.json thresholds.json   beside the preset (thresholds: multi-label)
        export/hf/                           the transformers format (config.json, safetensors)

Example:
    >>> RunLayout(Path("experiments/default/2026-01-01_12-00-00")).metrics
    PosixPath('experiments/default/2026-01-01_12-00-00/metrics.json')
"""

from dataclasses import dataclass
from pathlib import Path

HYDRA_DIR = ".hydra"
CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"
STATUS_FILE = "status.json"
ENV_FILE = "env.json"
LABELS_FILE = "labels.json"
THRESHOLDS_FILE = "thresholds.json"
LENGTHS_FILE = "lengths.json"
HISTORY_FILE = "history.json"
HISTORY_CSV_FILE = "history.csv"
MLFLOW_RUN_FILE = "mlflow_run.json"
METRICS_FILE = "metrics.json"
TOKENIZER_DIR = "tokenizer"
PROTO_FILE = "spm.model"
VOCAB_FILE = "vocab.txt"
NORMALIZATION_FILE = "normalization.json"
CHECKPOINTS_DIR = "checkpoints"
STATE_DIR = "state"
WEIGHTS_SUFFIX = ".weights.h5"
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "export"
PRESET_DIR = "preset"
MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
SAMPLE_PREDICTIONS_FILE = "sample_predictions.json"
TRANSFORMERS_DIR = "hf"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder (nothing is created): `RunLayout(root).metrics`, ..."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    hydra_config = property(lambda self: self.root / HYDRA_DIR / CONFIG_FILE)
    # What evaluate, predict and resume read (see app.runs.record.write_run_config).
    run_config = property(lambda self: self.root / CONFIG_FILE)
    overrides = property(lambda self: self.root / HYDRA_DIR / OVERRIDES_FILE)
    status = property(lambda self: self.root / STATUS_FILE)
    labels = property(lambda self: self.root / LABELS_FILE)
    # A multi-label run's {label: threshold} (data.threshold, or tuned: data.tune_thresholds).
    thresholds = property(lambda self: self.root / THRESHOLDS_FILE)
    # How the lengths left null were chosen from the data (the values also go to config.yaml).
    lengths = property(lambda self: self.root / LENGTHS_FILE)
    history = property(lambda self: self.root / HISTORY_FILE)
    history_csv = property(lambda self: self.root / HISTORY_CSV_FILE)  # Keras' CSVLogger's
    mlflow_run = property(lambda self: self.root / MLFLOW_RUN_FILE)
    metrics = property(lambda self: self.root / METRICS_FILE)
    tokenizer_dir = property(lambda self: self.root / TOKENIZER_DIR)
    proto = property(lambda self: self.root / TOKENIZER_DIR / PROTO_FILE)  # SentencePiece
    vocab = property(lambda self: self.root / TOKENIZER_DIR / VOCAB_FILE)  # or WordPiece
    # The text normalization before the tokenizer (a transformers checkpoint's, or WordPiece's).
    normalization = property(lambda self: self.root / TOKENIZER_DIR / NORMALIZATION_FILE)
    checkpoints = property(lambda self: self.root / CHECKPOINTS_DIR)
    states = property(lambda self: self.root / CHECKPOINTS_DIR / STATE_DIR)  # step-<N>/ states
    tensorboard = property(lambda self: self.root / TENSORBOARD_DIR)
    export = property(lambda self: self.root / EXPORT_DIR)
    preset = property(lambda self: self.root / EXPORT_DIR / PRESET_DIR)
    model = property(lambda self: self.root / EXPORT_DIR / MODEL_FILE)
    saved_model = property(lambda self: self.root / EXPORT_DIR / SAVED_MODEL_DIR)
    sample_predictions = property(lambda self: self.root / EXPORT_DIR / SAMPLE_PREDICTIONS_FILE)
    transformers = property(lambda self: self.root / EXPORT_DIR / TRANSFORMERS_DIR)

    def env(self, resumed_at: int | None = None) -> Path:
        """`env.json`, or `env-resume-<step>.json` for a resume at global batch `resumed_at`."""
        return self.root / (ENV_FILE if resumed_at is None else f"env-resume-{resumed_at}.json")

    def evaluation(self, split: str) -> Path:
        """The record `evaluate` writes for a split."""
        return self.root / f"eval_{split}.json"

    def weights(self, name: str) -> Path:
        """`checkpoints/<name>.weights.h5` (`best` or `last`)."""
        return self.checkpoints / f"{name}{WEIGHTS_SUFFIX}"
