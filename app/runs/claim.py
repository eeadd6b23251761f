"""One run = one new folder: a Hydra callback that claims it before Hydra writes anything.

Hydra creates `hydra.run.dir` with `exist_ok=True` and writes `.hydra/` and `train.log` into
it, so two runs started in the same second (the folder name has seconds) would share a folder,
and `hydra.run.dir=<an earlier run>` would overwrite that run's files. `ClaimRunFolder` runs
first (`on_run_start`, see conf/hydra/default.yaml) and

- creates the folder atomically (`mkdir` without `exist_ok`); when the timestamped default is
  taken, it takes `<timestamp>_1`, `<timestamp>_2`, ... and points `hydra.run.dir` there;
- refuses an explicit `hydra.run.dir` (or `hydra.sweep.dir`) that exists and is not empty;
  `resume=<run>` is the one way back into an existing folder (which must exist);
- checks the folder is writable and has `min_free_mb` free, so a read-only or full output
  location fails at start rather than when the first checkpoint is written.

Hydra swallows exceptions raised by callbacks (it only warns), so a refusal exits the process
with `SystemExit("error: ...")`: one line on stderr and exit code 1, before any work.
"""

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

from app.errors import ConfigError
from app.runs.read import refuse_live_run
from app.runtime.cluster import is_chief

MAX_SUFFIX = 1000


def _fail(message: str) -> None:
    raise SystemExit(f"error: {message}")


def _is_explicit(config: DictConfig, key: str) -> bool:
    """Whether `key` (e.g. `hydra.run.dir`) was set on the command line."""
    return any(o.split("=", 1)[0].lstrip("+") == key for o in config.hydra.overrides.hydra)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def claim_new_folder(wanted: Path) -> Path:
    """Create `wanted`, or the first free `wanted_1`, `wanted_2`, ...; return the one created.

    Args:
        wanted: the folder to create (its parents are created as needed).
    """
    wanted.parent.mkdir(parents=True, exist_ok=True)
    for suffix in range(MAX_SUFFIX):
        candidate = wanted if suffix == 0 else wanted.with_name(f"{wanted.name}_{suffix}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{wanted} and {MAX_SUFFIX - 1} suffixed folders all exist")


def check_writable(folder: Path, min_free_mb: int) -> None:
    """Write and remove a probe file in `folder` and check its free space; SystemExit if not."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as error:
        _fail(f"the run folder '{folder}' is not writable ({error.strerror}). "
              f"Set `paths.output_dir` (or `hydra.run.dir`) to a writable location")
    free_mb = shutil.disk_usage(folder).free // 2**20
    if free_mb < min_free_mb:
        _fail(f"only {free_mb} MB free at '{folder}'; a run needs at least {min_free_mb} MB. "
              f"Free space or set `paths.output_dir` elsewhere "
              f"(`hydra.callbacks.run_folder.min_free_mb` sets the threshold)")


class ClaimRunFolder(Callback):
    """Claims a new, writable run folder before Hydra writes into it.

    Args:
        min_free_mb: free space the output location must have at start.
    """

    def __init__(self, min_free_mb: int = 100):
        self.min_free_mb = min_free_mb

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        wanted = Path(config.hydra.run.dir)
        if config.get("resume") and is_chief():
            # `resume=<run>` continues that run, in its own folder (and only there); a
            # non-chief worker reads that folder and takes a new one for its logs.
            if not wanted.is_dir():
                _fail(f"`resume` '{config.resume}' does not exist; expected the folder of an "
                      f"earlier run (experiments/<name>/<timestamp>)")
            try:
                refuse_live_run(wanted)
            except ConfigError as error:
                _fail(str(error))
            check_writable(wanted, self.min_free_mb)
            return
        explicit = _is_explicit(config, "hydra.run.dir")
        if explicit and wanted.exists() and not _is_empty_dir(wanted):
            _fail(f"`hydra.run.dir` '{wanted}' already exists and is not empty; runs never share "
                  f"a folder. Choose a new folder, or leave `hydra.run.dir` unset")
        try:
            folder = wanted if explicit else claim_new_folder(wanted)
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            _fail(f"cannot create the run folder '{wanted}' ({error.strerror or error}). "
                  f"Set `paths.output_dir` (or `hydra.run.dir`) to a writable location")
        try:
            check_writable(folder, self.min_free_mb)
        except SystemExit:
            if not explicit:
                folder.rmdir()  # the folder it just created, still empty
            raise
        with open_dict(config.hydra.run):
            config.hydra.run.dir = str(folder)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        wanted = Path(config.hydra.sweep.dir)
        if wanted.exists() and not _is_empty_dir(wanted):
            _fail(f"`hydra.sweep.dir` '{wanted}' already exists and is not empty; sweeps never "
                  f"share a folder. Choose a new folder, or leave `hydra.sweep.dir` unset")
        try:
            wanted.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            _fail(f"cannot create the sweep folder '{wanted}' ({error.strerror or error}). "
                  f"Set `paths.output_dir` (or `hydra.sweep.dir`) to a writable location")
        check_writable(wanted, self.min_free_mb)
