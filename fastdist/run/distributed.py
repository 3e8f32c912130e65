"""dist=mpi: one node coordinator per MPI rank, each with its own shared-memory pool.

Synchronisation is hierarchical. Inside a node the workers average their slices in
shared memory as usual; the node mean then goes through ONE ``MPI.Allreduce`` in place
on the arena buffer (no copy, no pickle), done by the node coordinator, and every
worker reads the global mean from shared memory. Data are sharded over ranks x workers
global workers, each visiting its shard in the order a single machine with the same
total number of workers would use, so ``grad_avg`` gives the same model either way.

Rank 0 evaluates and writes ``metrics.json``. A failing rank aborts the MPI job, so
the others never wait forever in a collective.
"""

from __future__ import annotations

import threading

import numpy as np

from fastdist.engine.barrier import SpinBarrier
from fastdist.errors import ConfigError

__all__ = ["world", "NodeCoordinator", "gather_rows"]

_MISSING = "dist=mpi needs mpi4py and an MPI library: pip install 'fastdist[mpi]'"


def world():
    """MPI.COMM_WORLD, or a one-line ConfigError when MPI is not installed."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise ConfigError(_MISSING) from None
    return MPI.COMM_WORLD


class NodeCoordinator:
    """The coordinator's part of every cross-node sync, run while the pool trains.

    The pool is supervised from a thread (messages, deaths); the main thread meets the
    workers at the node barrier and runs the MPI collectives. Whichever fails first
    aborts both barriers, so nothing is left waiting. The number of syncs comes from
    the combiner's own schedule (``SyncSchedule.syncs_between``), the same pure
    function the workers follow step by step.
    """

    def __init__(self, comm, arena, n_workers: int) -> None:
        self.comm = comm
        self.barrier = SpinBarrier(arena["node_barrier"], n_workers, spin_seconds=0.0)
        self.means = arena["node_means"]  # one row per averaged vector
        self._scale = np.float32(1.0 / comm.Get_size())

    def run(self, pool, on_message, n_syncs: int) -> dict:
        from mpi4py import MPI

        outcome: dict = {}

        def supervise() -> None:
            try:
                outcome["done"] = pool.join(on_message)
            except BaseException as exc:  # reported by the main thread
                outcome["error"] = exc
                self.barrier.abort()

        monitor = threading.Thread(target=supervise, name="fastdist-supervisor", daemon=True)
        monitor.start()
        try:
            for _ in range(n_syncs):
                self.barrier.wait()  # the workers' node means are complete
                for buf in self.means:
                    self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                    buf *= self._scale
                self.barrier.wait()  # the global means are in shared memory
        except threading.BrokenBarrierError:
            monitor.join()
            raise outcome["error"] from None
        monitor.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["done"]


def gather_rows(comm, rows: np.ndarray) -> np.ndarray | None:
    """All ranks' rows stacked in rank order on rank 0 (None elsewhere)."""
    parts = comm.gather(np.ascontiguousarray(rows), root=0)
    return None if parts is None else np.concatenate(parts, axis=0)
