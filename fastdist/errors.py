"""The errors fastdist reports as one line, and the exit code each one maps to."""

from __future__ import annotations

__all__ = ["FastdistError", "ConfigError", "WorkerError", "DivergenceError"]


class FastdistError(Exception):
    """An expected failure: the CLI prints its message as one line, no traceback."""

    exit_code = 1


class ConfigError(FastdistError, ValueError):
    """The configuration or input data cannot work (exit code 2)."""

    exit_code = 2


class WorkerError(FastdistError):
    """A worker raised, died or was killed."""


class DivergenceError(FastdistError):
    """The training loss became NaN or infinite."""
