"""Noticing a worker that is alive but makes no progress (SIGSTOP, a deadlock).

Each worker owns one cache line of int64 in the pool's segment:
``[last beat (CLOCK_MONOTONIC ns), steps done, phase, slowest step (ns)]``. It beats
when it starts, after every step (:meth:`WorkerContext.heartbeat`) and while it waits
at the barrier (a worker waiting for a frozen peer is not the one to blame). Phase 0
is start-up (imports, compilation), 1 is training.

The coordinator polls the beats while it waits for messages. A worker silent for
longer than its limit is reported in one line, with its last step:

* ``worker_timeout`` given: that many seconds (start-up gets at least
  :data:`STARTUP_SECONDS`: a cold JIT compile on a loaded machine can take minutes);
* ``worker_timeout`` None: ``max(60 s, 10 x the slowest step any worker took so far)``.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["Liveness", "heartbeat_shape", "STARTUP_SECONDS", "MIN_AUTO_SECONDS"]

STARTUP_SECONDS = 600.0
MIN_AUTO_SECONDS = 60.0
_SLOWEST_FACTOR = 10
_LINE = 8  # int64 per 64-byte cache line


def heartbeat_shape(n_workers: int) -> tuple[int, int]:
    return (n_workers, _LINE)


class Liveness:
    """The coordinator's view of the heartbeats in ``beats`` (``heartbeat_shape``)."""

    def __init__(self, beats: np.ndarray, worker_timeout: float | None = None) -> None:
        if worker_timeout is not None and not worker_timeout > 0:
            raise ValueError(f"worker_timeout must be > 0 or None, got {worker_timeout}")
        self._beats = beats
        self._timeout = None if worker_timeout is None else float(worker_timeout)
        self._forgotten: set[int] = set()

    @property
    def poll_seconds(self) -> float:
        """How often the coordinator should look (a small part of the shortest limit)."""
        shortest = self._timeout if self._timeout is not None else MIN_AUTO_SECONDS
        return min(1.0, max(0.05, shortest / 4))

    def limit(self, rank: int) -> float:
        """Seconds worker ``rank`` may stay silent now."""
        if self._timeout is not None:
            stepping = self._timeout
        else:
            slowest = float(self._beats[:, 3].max()) / 1e9
            stepping = max(MIN_AUTO_SECONDS, _SLOWEST_FACTOR * slowest)
        if self._beats[rank, 2] == 0:  # still importing / compiling
            return max(stepping, STARTUP_SECONDS)
        return stepping

    def restart(self) -> None:
        """Idle workers are handed a new job (a warm pool): their silence counts from
        now, not from their last beat in the previous job, since an idle worker does
        not beat. Rows of workers that never started stay 0."""
        started = self._beats[:, 0] != 0
        self._beats[started, 0] = time.monotonic_ns()

    def forget(self, rank: int) -> None:
        """Stop watching ``rank`` (it was killed or excluded)."""
        self._forgotten.add(rank)

    def silent_worker(self, finished: set[int]) -> tuple[int, str] | None:
        """(rank, one-line message) of a worker past its limit, or None."""
        now = time.monotonic_ns()
        for rank in range(self._beats.shape[0]):
            if rank in finished or rank in self._forgotten:
                continue
            last = int(self._beats[rank, 0])
            if last == 0:
                continue  # not started yet: its process sentinel covers a failed start
            silent = (now - last) / 1e9
            limit = self.limit(rank)
            if silent > limit:
                where = (
                    f"last step {int(self._beats[rank, 1])}"
                    if self._beats[rank, 2]
                    else "still starting: imports/compilation"
                )
                setting = (
                    f"worker_timeout={self._timeout:g}"
                    if self._timeout is not None
                    else f"worker_timeout=null: {limit:.0f} s"
                )
                return rank, (
                    f"worker {rank} made no progress for {silent:.1f} s ({where}); "
                    f"stopped or stuck, so it was killed ({setting})"
                )
        return None
