"""dist=mpi: one node coordinator per MPI rank, each with its own shared-memory pool.

Every node's arena holds a row for every global worker in each per-worker array; a
node's workers write their own rows. At each of the combiner's sync points the node
coordinator gathers the rows the combiner publishes (``Exchange.published``) from every
node, in place on the arena's arrays (``MPI.Allgather``: no copy, no pickle), and the
workers then reduce the same rows in the same order as one machine would. Data are
sharded over ranks x workers global workers, each visiting its shard in the order a
single machine with the same total number of workers would use, so every syncing
combiner gives the same model either way, bit for bit (gathering rows moves more bytes
than reducing node means would: that is the price of bitwise equality).

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
    aborts both barriers, so nothing is left waiting. The sync points are the
    combiner's own (``Exchange.sync_at``), the same pure function the workers follow
    step by step.
    """

    def __init__(self, comm, arena, n_workers: int, exchange) -> None:
        self.comm, self.exchange = comm, exchange
        self.barrier = SpinBarrier(arena["node_barrier"], n_workers, spin_seconds=0.0)
        self.published = exchange.published(arena)
        if not all(rows.flags.c_contiguous for rows in self.published):
            raise ValueError("a combiner's published arrays must be contiguous arena rows")

    def _gather(self) -> None:
        from mpi4py import MPI

        for rows in self.published:  # each node's block of rows, in place, rank order
            self.comm.Allgather(MPI.IN_PLACE, rows)

    def run(self, pool, on_message, start_step: int, total_steps: int) -> dict:
        n_syncs = self.exchange.syncs_between(start_step, total_steps, total_steps)
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
                self.barrier.wait()  # the node's workers wrote their rows
                self._gather()
                self.barrier.wait()  # every node's rows are in shared memory
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
