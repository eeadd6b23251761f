"""The exceptions that end a command: user errors (each says what was received and what is
expected) and a preempted run."""

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGINT after saving; resume it.


class AppError(Exception):
    """Base class of errors caused by the user's config or data (not by a bug)."""


class ConfigError(AppError):
    """A config value is missing, of the wrong type, or inconsistent with another."""


class DataError(AppError):
    """A data file is missing, unreadable or malformed."""


class Preempted(Exception):  # noqa: N818 (a stop, not an error)
    """Training stopped on a signal after saving the state of global batch `step`."""

    def __init__(self, step: int):
        super().__init__(f"stopped by a signal after step {step}")
        self.step = step


class WorkerLost(AppError):
    """A worker of a multi-worker run died or stopped answering: every worker stopped, and the
    run resumes from its last saved state."""
