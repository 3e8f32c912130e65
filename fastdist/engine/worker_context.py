"""What a worker function receives: :class:`WorkerContext`, its rank, the shared barrier,
its pipe to the coordinator and its row of the pool's heartbeats.

The worker's only ways to talk to the coordinator are here: small control messages over
the pipe (:meth:`WorkerContext.send`) and the heartbeat stores that
:class:`~fastdist.engine.liveness.Liveness` watches (:meth:`WorkerContext.heartbeat`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from fastdist.engine.barrier import SpinBarrier

__all__ = ["WorkerContext"]


@dataclass
class WorkerContext:
    """What a worker function receives besides its rank and its own arguments."""

    rank: int
    n_workers: int
    barrier: SpinBarrier  # shared by the workers; the coordinator can abort it
    _conn: Connection
    _heartbeat: np.ndarray | None = None  # this worker's row of the pool's heartbeats
    _last_step_ns: int = 0
    _slowest_ns: int = 0

    def send(self, kind: str, payload: Any = None) -> None:
        """A small control message to the coordinator (never an array)."""
        self._conn.send((kind, self.rank, payload))

    def begin_job(self) -> None:
        """A warm worker takes a new job: its heartbeat starts over as a new worker's
        (start-up phase, beating now), so neither the idle time since its last job nor
        that job's slowest step counts against this one."""
        self._last_step_ns = self._slowest_ns = 0
        beat = self._heartbeat
        if beat is not None:
            beat[1:4] = 0  # steps, phase (start-up), slowest step
            beat[0] = time.monotonic_ns()

    def heartbeat(self, step: int) -> None:
        """``step`` steps are done: tell the coordinator this worker is making progress
        (a few array stores; call it once per step)."""
        beat = self._heartbeat
        if beat is None:
            return
        now = time.monotonic_ns()
        if self._last_step_ns:
            took = now - self._last_step_ns
            if took > self._slowest_ns:  # rare: written only when it grows
                self._slowest_ns = beat[3] = took
        else:
            beat[2] = 1  # stepping: past imports and compilation
        self._last_step_ns = now
        beat[1] = step
        beat[0] = now
