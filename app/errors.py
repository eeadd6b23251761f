"""User-facing errors: each says what was received and what is expected."""


class AppError(Exception):
    """Base class of errors caused by the user's config or data (not by a bug)."""


class ConfigError(AppError):
    """A config value is missing, of the wrong type, or inconsistent with another."""


class DataError(AppError):
    """A data file is missing, unreadable or malformed."""
