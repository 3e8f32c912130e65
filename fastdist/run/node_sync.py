"""A worker's side of a sync across machines (``dist=mpi``): the node barrier, where its
node coordinator gathers the other machines' rows (:mod:`fastdist.run.distributed`)."""

from __future__ import annotations

from fastdist.engine.barrier import SpinBarrier
from fastdist.engine.shm import SharedArena

__all__ = ["NodeSync"]


class NodeSync:
    """A worker's side of a node's sync (dist=mpi).

    The node barrier has one more party than there are workers: the node coordinator.
    Each worker has written the rows the combiner publishes (its own global row of each
    array); once the node's workers and its coordinator meet, the coordinator gathers
    every other node's rows into the same arrays with MPI, and they meet again: every
    row is then current, and each worker reduces its slice exactly as on one machine.
    """

    def __init__(self, arena: SharedArena, rank: int) -> None:
        self.barrier = SpinBarrier(arena["node_barrier"], rank)

    def meet(self) -> None:
        self.barrier.wait()  # the node's rows are written: the coordinator may send them
        self.barrier.wait()  # every node's rows are here
