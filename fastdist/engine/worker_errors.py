"""How a worker's failure becomes the coordinator's one-line error.

Both ends of the ``error`` message live here: :func:`error_report` is what a failing
worker sends (its exception's type when it is an expected :class:`FastdistError`, its
first line, its traceback), :func:`worker_failure` re-creates that error in the
coordinator with the worker's traceback as its ``__cause__`` (as loky does), and
:func:`describe_exit` words how a worker that sent nothing ended.
"""

from __future__ import annotations

import signal
import traceback

from fastdist.errors import FastdistError, WorkerError

__all__ = ["RemoteTraceback", "error_report", "worker_failure", "describe_exit"]


class RemoteTraceback(Exception):
    """A worker's traceback, attached as the ``__cause__`` of the error it raised."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def error_report(exc: BaseException) -> dict:
    """The payload of a worker's ``error`` message; call it while handling ``exc``.

    Expected failures keep their type (the CLI maps it to an exit code); anything else
    is reported as "Type: first line". The traceback travels along."""
    expected = isinstance(exc, FastdistError)
    return {
        "type": type(exc).__name__ if expected else "",
        "message": str(exc).strip().splitlines()[0] if expected else _one_line(exc),
        "traceback": traceback.format_exc(),
    }


def worker_failure(rank: int, detail: dict) -> FastdistError:
    """Re-create a worker's expected error in the coordinator (same type, rank named)."""
    from fastdist import errors

    cls = getattr(errors, detail["type"], None) if detail["type"] else None
    if isinstance(cls, type) and issubclass(cls, FastdistError):
        error = cls(f"worker {rank}: {detail['message']}")
    else:
        error = WorkerError(f"worker {rank} failed: {detail['message']}")
    error.__cause__ = RemoteTraceback(detail.get("traceback", ""))
    return error


def describe_exit(code: int | None) -> str:
    """How a worker process ended, from its exit code (negative: the signal)."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
