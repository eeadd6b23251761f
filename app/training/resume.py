"""Step-exact training states and resume: model, optimizer, dropout RNG and data position.

Keras' BackupAndRestore resumes at epoch boundaries only, and `model.weights` leaves out the
dropout seed generators, so a state here is every variable of the model (`model.variables`
includes the seed-generator states) and of the optimizer (moments and iteration count, which
drives the learning-rate schedule), plus the global batch index. The data position follows
from that index: each epoch's order comes from the seed and the epoch alone (see
app.data.pipeline.epoch_stream), so a resumed run skips exactly the batches already seen.

States are `.npz` arrays (no pickle) in `checkpoints/state/step-<N>/`, written to a temporary
folder and renamed, so a crash mid-write never leaves a corrupt latest state.
"""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from app.config.schema import TrainConfig
from app.errors import ConfigError
from app.runs.layout import RunLayout
from app.runs.read import load_config, refuse_live_run
from app.runtime.cluster import is_chief

log = logging.getLogger(__name__)

# Callback targets renamed since a resumable run may have saved its config (version 0.1).
MOVED_TARGETS = {
    "app.checkpoints.AtomicModelCheckpoint": "app.training.checkpoints.AtomicModelCheckpoint",
}


def _state_variables(model: keras.Model) -> dict[str, list]:
    return {"model": model.variables, "optimizer": model.optimizer.variables}


def save_state(state_dir: Path, model: keras.Model, step: int, keep: int,
               meta: dict | None = None) -> Path:
    """Write the state after global batch `step` atomically; keep the newest `keep` states.

    `meta` (JSON) holds what the run's other parts need to continue exactly: what the
    callbacks remember, the learning-rate factor of rollbacks, the training time so far.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / f"step-{step:09d}"
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=state_dir))
    arrays = {f"{group}/{i}": keras.ops.convert_to_numpy(v.value)
              for group, variables in _state_variables(model).items()
              for i, v in enumerate(variables)}
    np.savez(scratch / "variables.npz", **arrays)
    (scratch / "meta.json").write_text(json.dumps({**(meta or {}), "step": step}))
    if target.exists():
        shutil.rmtree(target)
    os.replace(scratch, target)
    for old in all_states(state_dir)[:-keep]:
        shutil.rmtree(old)
    return target


def nonfinite_weights(model: keras.Model) -> list[str]:
    """The paths of the model's trainable variables holding a NaN or an infinity."""
    return [v.path for v in model.trainable_variables
            if not np.isfinite(keras.ops.convert_to_numpy(v.value)).all()]


def all_states(state_dir: Path) -> list[Path]:
    """Complete states, oldest first."""
    if not state_dir.is_dir():
        return []
    return sorted(p for p in state_dir.glob("step-*") if (p / "meta.json").is_file())


def restore_state(path: Path, model: keras.Model) -> dict:
    """Load a state into a compiled model (its optimizer is built here); return its meta
    (`step`: the global batch to continue from)."""
    model.optimizer.build(model.trainable_variables)
    with np.load(path / "variables.npz", allow_pickle=False) as arrays:
        for group, variables in _state_variables(model).items():
            for i, variable in enumerate(variables):
                variable.assign(arrays[f"{group}/{i}"])
    return json.loads((path / "meta.json").read_text())


def resumed_config(run_dir: str) -> DictConfig:
    """The saved config of the run to resume (schema defaults fill keys added since), set to
    reuse that run's tokenizer. Refused before anything is written when the run is complete
    or has no saved state."""
    layout = RunLayout(Path(run_dir))
    saved = load_config(layout)
    if saved is None:
        raise ConfigError(f"`resume` must name a run folder with a saved config. "
                          f"Received: '{run_dir}' (no {layout.run_config.name} or "
                          f"{layout.hydra_config.relative_to(layout.root)})")
    status = layout.status
    if status.is_file() and json.loads(status.read_text()).get("status") == "completed":
        raise ConfigError(f"`resume` names a run that already completed: '{run_dir}'")
    if is_chief():  # non-chief workers resume alongside the live chief
        refuse_live_run(run_dir)
    if not all_states(layout.states):
        raise ConfigError(f"`resume` names a run with no saved training state: '{run_dir}' has "
                          f"no '{layout.states.relative_to(layout.root)}/step-*' folder "
                          f"(runs save one at their start)")
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
    for node in cfg.callbacks.values():
        if node is not None and node.get("_target_") in MOVED_TARGETS:
            node._target_ = MOVED_TARGETS[node._target_]
    cfg.resume = str(run_dir)
    if layout.vocab.is_file():
        cfg.tokenizer.vocab = str(layout.vocab)
    else:
        cfg.tokenizer.proto = str(layout.proto)
    return cfg


def restore_latest(run_dir: Path, model: keras.Model) -> dict:
    """Restore the newest state of a run; return its meta (`step`: where to continue)."""
    states = all_states(RunLayout(run_dir).states)
    meta = restore_state(states[-1], model)
    log.info("Resumed from %s (step %d)", states[-1], meta["step"])
    return meta
