"""Errors a user can cause, each carrying one sentence that says what was wrong and what to do.

The CLI prints ``error: <sentence>`` and exits with ``exit_code``; nothing here is a bug.
"""
from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "GradHealthError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "RecordError",
    "NonFiniteError",
    "Interrupted",
    "unknown_name",
]


class GradHealthError(Exception):
    """Base of every user-facing error; ``exit_code`` 1 means the run itself failed."""

    exit_code = 1


class ConfigError(GradHealthError, ValueError):
    """A name, value or option the user gave is not valid (usage error, exit 2)."""

    exit_code = 2


class DataError(GradHealthError):
    """A data set could not be found or read."""


class CheckpointError(GradHealthError):
    """A checkpoint is missing, corrupt, truncated or for another architecture, or cannot be written
    (``disk_full``: the disk ran out of space, the previous checkpoint is kept)."""

    def __init__(self, message: str, *, disk_full: bool = False):
        super().__init__(message)
        self.disk_full = disk_full


class RecordError(GradHealthError):
    """A metrics log (JSONL/CSV) is missing or broken."""


class NonFiniteError(GradHealthError):
    """Training produced NaN or Inf and the policy was to stop with an error."""


class Interrupted(GradHealthError):
    """The run was stopped by Ctrl-C or SIGTERM after saving a checkpoint (exit 130, as shells expect)."""

    exit_code = 130


def unknown_name(kind: str, name: object, choices: Iterable[str]) -> ConfigError:
    """The one error for every lookup by name: it lists the valid choices."""
    listed = ", ".join(sorted(choices))
    return ConfigError(f"unknown {kind} {name!r}; choose one of: {listed}.")
