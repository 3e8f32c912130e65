"""A worker's side of the hierarchical allreduce across machines (``dist=mpi``): the
node-level mean in shared memory, then the node coordinator's MPI allreduce of it."""

from __future__ import annotations

import numpy as np

from fastdist.engine.allreduce import mean_rows_into
from fastdist.engine.barrier import SpinBarrier
from fastdist.engine.shm import SharedArena

__all__ = ["NodeSync"]


class NodeSync:
    """A worker's side of the hierarchical allreduce (dist=mpi).

    The node barrier has one more party than there are workers: the node coordinator.
    Workers write the node mean of their slice into ``node_means`` (one buffer per
    averaged vector: parameters first, then any optimizer state), meet the coordinator
    (it allreduces the buffers in place across nodes with MPI), and meet it again once
    the global means are there.
    """

    def __init__(self, arena: SharedArena, rank: int) -> None:
        self.barrier = SpinBarrier(arena["node_barrier"], rank)
        self.means = arena["node_means"]

    def allreduce(self) -> None:
        self.barrier.wait()  # the node means are complete: the coordinator may send them
        self.barrier.wait()  # the buffers hold the means over all nodes

    def average_rows(self, averaged: list[np.ndarray], lo: int, hi: int) -> None:
        for rows, mean in zip(averaged, self.means):
            mean_rows_into(rows, mean, lo, hi)
        self.allreduce()
        for rows, mean in zip(averaged, self.means):
            rows[:, lo:hi] = mean[lo:hi]
