"""Allreduce-average in shared memory (reduce-scatter by slices + barrier).

Each worker has written its vector into its own row of ``slots``. After a barrier,
worker k averages slice k of every row into ``out`` and, after a second barrier,
everyone reads the full result: each byte is read once and written once, O(P) traffic
per worker and no copies through pipes. The training loop fuses this with the SGD
update (e.g. :func:`fastdist.optim.sgd.sgd_update_from_mean`); this standalone form serves
parameter averaging, benchmarks and node-level reduction.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["block_mean", "mean_rows_into", "average_rows", "slice_bounds", "allreduce_mean"]


# 0-based loops over block views: see the note in fastdist.optim.blocked (vectorisation).
_BLOCK = 4096


@njit(cache=True, nogil=True)
def block_mean(rows, start, stop, out):
    """out[:stop - start] = mean of rows[:, start:stop], summed in row order.

    The one reduction loop of the package: the allreduce, parameter averaging and the
    fused SGD step all call it on blocks small enough to stay in L1.
    """
    inv = np.float32(1.0) / np.float32(rows.shape[0])
    o = out[: stop - start]
    first = rows[0, start:stop]
    for i in range(o.shape[0]):
        o[i] = first[i]
    for r in range(1, rows.shape[0]):
        row = rows[r, start:stop]
        for i in range(o.shape[0]):
            o[i] += row[i]
    for i in range(o.shape[0]):
        o[i] *= inv


@njit(cache=True, nogil=True)
def mean_rows_into(rows, out, lo, hi):
    """out[lo:hi] = mean of rows[:, lo:hi], summed in row order (reproducible)."""
    for start in range(lo, hi, _BLOCK):
        stop = min(start + _BLOCK, hi)
        block_mean(rows, start, stop, out[start:stop])


@njit(cache=True, nogil=True)
def average_rows(rows, lo, hi):
    """Replace columns [lo, hi) of every row by their mean across rows."""
    acc = np.empty(_BLOCK, np.float32)
    for start in range(lo, hi, _BLOCK):
        stop = min(start + _BLOCK, hi)
        block_mean(rows, start, stop, acc)
        for r in range(rows.shape[0]):
            row = rows[r, start:stop]
            for i in range(row.shape[0]):
                row[i] = acc[i]


def slice_bounds(n_values: int, n_parts: int, part: int) -> tuple[int, int]:
    """Part ``part`` of ``n_parts`` near-equal slices of ``n_values``.

    Boundaries are rounded to 16 float32 (64 bytes) so two workers never write the same
    cache line.
    """
    chunk = -(-n_values // n_parts)
    chunk = -(-chunk // 16) * 16
    return min(part * chunk, n_values), min((part + 1) * chunk, n_values)


def allreduce_mean(slots: np.ndarray, out: np.ndarray, rank: int, barrier) -> None:
    """Collective call: every worker passes the same ``slots``/``out`` and its rank."""
    lo, hi = slice_bounds(out.shape[0], slots.shape[0], rank)
    barrier.wait()  # every row is written
    mean_rows_into(slots, out, lo, hi)
    barrier.wait()  # every slice of the result is written
