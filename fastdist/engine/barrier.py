"""A barrier in shared memory that no dead process can jam.

``multiprocessing.Barrier`` is a Condition over a lock: a worker SIGKILLed while it
holds that lock (inside ``wait``) deadlocks everyone else, the coordinator's
``abort()`` included (seen here). This barrier takes no lock at all. Each worker owns
one counter, on its own cache line, and only ever writes that one: arriving at the
n-th barrier sets it to n, and waiting means watching until every counter reaches n.
Counters only grow, so there is nothing to reset and a fast worker racing into the
next barrier cannot confuse a slow one. A separate flag, set by the coordinator,
breaks every wait at once.

Ordering: a worker's writes to the arena (its gradient) happen before its counter
store, and x86-64 keeps stores in program order (TSO), so a peer that sees the
counter also sees the gradient. Weaker memory models (arm64) would need a fence that
NumPy cannot issue, so :func:`check_memory_order` refuses them in one line instead of
risking a silently wrong average.
"""

from __future__ import annotations

import os
import platform
import threading
import time

import numpy as np

from fastdist.errors import ConfigError

__all__ = ["SpinBarrier", "barrier_shape", "check_memory_order"]

_TSO_MACHINES = ("x86_64", "amd64", "i386", "i686")


def check_memory_order(machine: str | None = None) -> None:
    """Refuse CPUs whose stores may become visible out of order (see the module doc)."""
    machine = (machine or platform.machine()).lower()
    if machine not in _TSO_MACHINES:
        raise ConfigError(
            f"fastdist's shared-memory barrier needs x86-64 store ordering; this CPU is "
            f"{machine}, where it could average stale gradients"
        )


_LINE = 8  # int64 per 64-byte cache line
_EXCLUDED = 2**62  # a counter value no live party reaches


def barrier_shape(n_parties: int) -> tuple[int, int]:
    """Shape of the int64 array a barrier for ``n_parties`` needs: one cache line per
    party, plus one for the abort flag."""
    return (n_parties + 1, _LINE)


class SpinBarrier:
    """The view of one party (``rank``) on a barrier stored in ``slots``.

    Waiting spins with ``sched_yield`` for ``spin_seconds`` (cheap when workers <=
    cores, and it gives the core away when they are not), then sleeps in 100 us steps.
    """

    def __init__(
        self,
        slots: np.ndarray,
        rank: int | None,
        spin_seconds: float = 0.005,
        heartbeat: np.ndarray | None = None,
    ) -> None:
        # ``heartbeat``: this party's liveness slot (engine.liveness); waiting beats it,
        # so a party blocked by a frozen peer is not mistaken for the frozen one.
        self._beat = heartbeat
        self.n_parties = slots.shape[0] - 1
        self._slots = slots
        self._arrivals = slots[: self.n_parties, 0]
        self._abort_flag = slots[self.n_parties, :1]
        self.rank = rank
        self._spin = spin_seconds
        self._generation = 0 if rank is None else int(slots[rank, 0])

    def wait(self) -> None:
        """Block until every party has arrived here; BrokenBarrierError if aborted."""
        self._generation += 1
        generation = self._generation
        self._slots[self.rank, 0] = generation
        arrivals, abort_flag, beat = self._arrivals, self._abort_flag, self._beat
        started = None
        while arrivals.min() < generation:
            if abort_flag[0]:
                raise threading.BrokenBarrierError
            if started is None:
                started = time.perf_counter()
            if time.perf_counter() - started < self._spin:
                os.sched_yield()
            else:
                if beat is not None:
                    beat[0] = time.monotonic_ns()
                time.sleep(1e-4)
        if abort_flag[0]:
            raise threading.BrokenBarrierError

    def exclude(self, rank: int) -> None:
        """Stop waiting for ``rank`` (a dead worker) from now on: its counter jumps
        past every generation, so ``min`` over the counters ignores it."""
        self._slots[rank, 0] = _EXCLUDED

    def abort(self) -> None:
        """Break this and every future wait (the coordinator calls this on failure)."""
        self._abort_flag[0] = 1
