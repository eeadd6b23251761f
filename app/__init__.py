"""albert-trainer: train ALBERT language models with Keras and keras-hub, driven by Hydra."""

import os
import sys


def _started_as_command() -> bool:
    """Whether this process is one of the app's commands (`albert-*`, `python -m app...`), or a
    task a submitit launcher started (`hydra/launcher=submitit_*`: it unpickles the command)."""
    # While `python -m app.<command>` locates its module, sys.argv[0] is "-m".
    return (sys.argv[0] == "-m" or os.path.basename(sys.argv[0]).startswith("albert-")
            or "SUBMITIT_EXECUTOR" in os.environ)


if _started_as_command():
    # Before any module imports TensorFlow: its start-up lines would reach the terminal, and
    # oneDNN is chosen when it starts.
    from app.runtime.cpu import tune_cpu
    from app.runtime.native_logs import filter_native_logs

    filter_native_logs()
    tune_cpu()
