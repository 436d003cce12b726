"""Error types the command line knows how to print as one-line messages.

Anything raised as a :class:`MedNCAError` is a problem the user can fix (bad input, a missing
file, an output that already exists). Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class MedNCAError(Exception):
    """Base class of all user-fixable errors; its message says what to do."""


class DataError(MedNCAError):
    """A dataset folder, volume or label is missing, unreadable or inconsistent."""


class ConfigError(MedNCAError, ValueError):
    """A configuration value or preset name is invalid."""


class CheckpointError(MedNCAError):
    """A checkpoint is missing, corrupt or from an incompatible version."""


class OutputExistsError(MedNCAError):
    """An output path exists and overwriting was not allowed."""


class OutputError(MedNCAError):
    """An output cannot be written: a read-only place, a full disk, a path under a file."""


class DownloadError(MedNCAError):
    """A dataset archive could not be fetched, verified or unpacked."""


class TrainingError(MedNCAError):
    """Training cannot go on (e.g. the loss stays non-finite after rolling back)."""


class ExportError(MedNCAError):
    """An export or an exported model cannot be written, read or run."""


class MissingDependencyError(MedNCAError):
    """An optional dependency (an extra such as ``report`` or ``export``) is not installed."""
