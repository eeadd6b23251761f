"""The run folder's contract: every path in it, named once (as keras-hub's preset_utils does).

    experiments/<name>/<YYYY-MM-DD_HH-MM-SS>/
        .hydra/config.yaml, overrides.yaml   the resolved config and the command-line overrides
        status.json env.json labels.json history.json metrics.json eval_<split>.json
        tokenizer/spm.model                  the SentencePiece model the run used
        checkpoints/best.weights.h5 last.weights.h5 state/step-<N>/
        tensorboard/
        export/preset/ model.keras saved_model/ sample_predictions.json

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
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
TOKENIZER_DIR = "tokenizer"
PROTO_FILE = "spm.model"
CHECKPOINTS_DIR = "checkpoints"
STATE_DIR = "state"
WEIGHTS_SUFFIX = ".weights.h5"
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "export"
PRESET_DIR = "preset"
MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
SAMPLE_PREDICTIONS_FILE = "sample_predictions.json"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder (nothing is created)."""

    root: Path

    @property
    def hydra_config(self) -> Path:
        return self.root / HYDRA_DIR / CONFIG_FILE

    @property
    def overrides(self) -> Path:
        return self.root / HYDRA_DIR / OVERRIDES_FILE

    @property
    def status(self) -> Path:
        return self.root / STATUS_FILE

    def env(self, resumed_at: int | None = None) -> Path:
        """`env.json`, or `env-resume-<step>.json` for a resume at global batch `resumed_at`."""
        return self.root / (ENV_FILE if resumed_at is None else f"env-resume-{resumed_at}.json")

    @property
    def labels(self) -> Path:
        return self.root / LABELS_FILE

    @property
    def history(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    def evaluation(self, split: str) -> Path:
        """The record `evaluate` writes for a split."""
        return self.root / f"eval_{split}.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / TOKENIZER_DIR

    @property
    def proto(self) -> Path:
        return self.tokenizer_dir / PROTO_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    def weights(self, name: str) -> Path:
        """`checkpoints/<name>.weights.h5` (`best` or `last`)."""
        return self.checkpoints / f"{name}{WEIGHTS_SUFFIX}"

    @property
    def states(self) -> Path:
        """Where full training states (`step-<N>/`) are kept for resume."""
        return self.checkpoints / STATE_DIR

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    @property
    def export(self) -> Path:
        return self.root / EXPORT_DIR

    @property
    def preset(self) -> Path:
        return self.export / PRESET_DIR

    @property
    def model(self) -> Path:
        return self.export / MODEL_FILE

    @property
    def saved_model(self) -> Path:
        return self.export / SAVED_MODEL_DIR

    @property
    def sample_predictions(self) -> Path:
        return self.export / SAMPLE_PREDICTIONS_FILE
