"""Gradient clipping by global L2 norm (``optimizer.clip_norm``), exact under sharding.

Under ``grad_avg`` no worker holds the averaged gradient: worker k only ever forms
slice k of it, one L1-sized block at a time, inside its fused update. Clipping needs
the norm of the whole average first, so each worker computes the sum of squares of its
slice of the mean (the same block means the update will compute again: no copy of the
gradient is made), writes that partial sum to its own cache line in the arena, meets
the others at a barrier, and adds the partial sums in rank order. Every worker gets the
same scale, equal to what one process with the whole averaged gradient computes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from fastdist.engine.allreduce import block_mean
from fastdist.optim.blocked import BLOCK

__all__ = ["GlobalNormClip", "clip_scale", "sum_of_squares", "sum_of_squares_of_mean"]


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _block_sumsq(x):
    # Reassociation lets LLVM vectorise the float64 reduction; the result depends only
    # on the block (same code, same bounds), so runs stay reproducible.
    total = 0.0
    for i in range(x.shape[0]):
        xi = np.float64(x[i])
        total += xi * xi
    return total


@njit(cache=True, nogil=True)
def sum_of_squares(vec, lo, hi):
    """sum(vec[lo:hi]**2), accumulated in float64."""
    # A reduction, so not one of fastdist.optim.blocked's update drivers: same blocks.
    total = 0.0
    for start in range(lo, hi, BLOCK):
        total += _block_sumsq(vec[start : min(start + BLOCK, hi)])
    return total


@njit(cache=True, nogil=True)
def sum_of_squares_of_mean(rows, lo, hi):
    """sum(mean(rows[:, lo:hi], axis=0)**2) without materialising the mean: the block
    means are the ones :func:`fastdist.engine.allreduce.block_mean` gives the update."""
    acc = np.empty(BLOCK, np.float32)
    total = 0.0
    for start in range(lo, hi, BLOCK):
        stop = min(start + BLOCK, hi)
        block_mean(rows, start, stop, acc)
        total += _block_sumsq(acc[: stop - start])
    return total


def clip_scale(sumsq: float, max_norm: float) -> float:
    """The factor that brings a gradient of squared norm ``sumsq`` to ``max_norm``
    (1 when it is already within; optax's ``clip_by_global_norm``)."""
    norm = math.sqrt(sumsq)
    return max_norm / norm if norm > max_norm else 1.0


class GlobalNormClip:
    """One worker's side of clipping by the global norm.

    ``parts`` is a (workers, 8) float64 arena array: one cache line per worker for its
    partial sum of squares. ``barrier`` is the workers' barrier. A worker must not write
    its partial sum again before everyone has read this step's (the update's own
    barrier guarantees that in the training loop).
    """

    def __init__(self, max_norm: float, parts: np.ndarray, rank: int, barrier) -> None:
        self.max_norm = float(max_norm)
        self.parts, self.rank, self.barrier = parts, rank, barrier
        self.last_norm = 0.0

    def _combine(self, partial: float) -> float:
        self.parts[self.rank, 0] = partial
        self.barrier.wait()  # every partial sum is written
        total = 0.0
        for k in range(self.parts.shape[0]):  # rank order: the same sum in every worker
            total += float(self.parts[k, 0])
        self.last_norm = math.sqrt(total)
        return clip_scale(total, self.max_norm)

    def scale_for_mean(self, grads: np.ndarray, lo: int, hi: int) -> float:
        """Collective: the scale for the mean over the rows of ``grads``; this worker
        reduces columns [lo, hi)."""
        return self._combine(sum_of_squares_of_mean(grads, lo, hi))

    def scale_for_slices(self, vec: np.ndarray, lo: int, hi: int) -> float:
        """Collective: the scale for ``vec``, whose slice [lo, hi) this worker holds."""
        return self._combine(sum_of_squares(vec, lo, hi))

    def scale_for_own(self, grad: np.ndarray) -> float:
        """Not collective: the scale for this worker's own whole gradient."""
        total = sum_of_squares(grad, 0, grad.shape[0])
        self.last_norm = math.sqrt(total)
        return clip_scale(total, self.max_norm)
