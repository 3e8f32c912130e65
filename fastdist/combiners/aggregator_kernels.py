"""The Numba kernels of the aggregation rules (:mod:`fastdist.combiners.aggregators`).

Each kernel works on columns [lo, hi) (or on whole distance blocks) of the rows
``rows[members]`` of a shared (N, P) float32 array; :class:`~fastdist.combiners.
aggregators.AggregatorWorker` decides which, meets the other workers and takes the
decisions. Here:

* the means: :func:`mean_members` (float32, bitwise the allreduce's mean) and
  :func:`mean64_members` (float64, Krum's chosen rows);
* the coordinate-wise rules, :func:`coordinate_wise`, with the compare-exchange pairs
  of :func:`sorting_network`;
* the distance rules' partial sums, one row of an arena array per block of
  :data:`DISTANCE_BLOCK` columns: :func:`pair_partials` (Krum), :func:`point_partials`
  (Weiszfeld, centered clipping), added by :func:`sum_blocks`; and the current point
  of the iterative rules, :func:`combination_into`.

A block's sum of squares is defined by the code alone, so that it has the same bits on
every machine and whatever the split of the columns among workers: element e of the
block (counted from the block's first column) is added, in order of e, to float64 lane
e % :data:`_LANES`, and the lanes are then added as a fixed pairwise tree. The lanes
are independent, so LLVM vectorises them without reassociating any sum (no fastmath),
whatever the CPU's vector width.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "DISTANCE_BLOCK",
    "combination_into",
    "coordinate_wise",
    "mean64_members",
    "mean_members",
    "pair_partials",
    "point_partials",
    "sorting_network",
    "sum_blocks",
]

# Columns per block of the distance rules' partial sums. Part of the definition of the
# result (the float64 sums are grouped by block), so it never depends on the machine.
DISTANCE_BLOCK = 4096
# Float64 lanes of a block's sum of squares: also part of the definition. 64 lanes:
# LLVM vectorises the lane loop (16 lanes it unrolls fully and leaves scalar, 4x
# slower than the former store-then-tree-sum; 64 and 128 measured the same).
_LANES = 64
# Floats of gathered column values per block of the coordinate-wise rules: n rows x
# width columns of float32 = 32 KiB, L1-sized.
_GATHER_FLOATS = 8192
# The mean's blocks: those of fastdist.engine.allreduce, for the same bits.
_MEAN_BLOCK = 4096

# Kernels loop over 0-based views of a block (see the note in fastdist.optim.blocked:
# Numba then drops its wraparound checks and LLVM vectorises the loops).


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _nonfinite(x):
    """Whether ``x`` holds a NaN or an inf: sum(x * 0) is 0 for finite values and NaN
    otherwise. Only the flag matters, so the sum may be reassociated (vectorised)."""
    flag = np.float32(0.0)
    for i in range(x.shape[0]):
        flag += x[i] * np.float32(0.0)
    return flag != 0.0


# ------------------------------------------------------------------ sums of squares


@njit(cache=True, nogil=True)
def _lane_total(acc):
    """The sum of the ``_LANES`` lanes of ``acc`` as a fixed pairwise tree (lane l gets
    lane l + w, for w = _LANES / 2, ..., 1). Overwrites ``acc``."""
    width = _LANES
    while width > 1:
        width //= 2
        low = acc[:width]
        high = acc[width : 2 * width]
        for i in range(width):
            low[i] += high[i]
    return acc[0]


@njit(cache=True, nogil=True)
def _sq_distance(x, y, acc):
    """sum((x - y)**2) in float64 over two float32 or float64 vectors: element e into
    lane e % _LANES, in order of e, then :func:`_lane_total`. ``acc``: _LANES floats
    of scratch."""
    for i in range(_LANES):
        acc[i] = 0.0
    n = x.shape[0]
    full = n - n % _LANES
    for start in range(0, full, _LANES):
        xs = x[start : start + _LANES]
        ys = y[start : start + _LANES]
        for i in range(_LANES):
            d = np.float64(xs[i]) - np.float64(ys[i])
            acc[i] += d * d
    xs = x[full:n]
    ys = y[full:n]
    for i in range(xs.shape[0]):
        d = np.float64(xs[i]) - np.float64(ys[i])
        acc[i] += d * d
    return _lane_total(acc)


@njit(cache=True, nogil=True)
def _sq_norm(x, acc):
    """sum(x**2) in float64, in the lanes of :func:`_sq_distance`."""
    for i in range(_LANES):
        acc[i] = 0.0
    n = x.shape[0]
    full = n - n % _LANES
    for start in range(0, full, _LANES):
        xs = x[start : start + _LANES]
        for i in range(_LANES):
            v = np.float64(xs[i])
            acc[i] += v * v
    xs = x[full:n]
    for i in range(xs.shape[0]):
        v = np.float64(xs[i])
        acc[i] += v * v
    return _lane_total(acc)


# ------------------------------------------------------------------ the means


@njit(cache=True, nogil=True)
def mean_members(rows, members, lo, hi, out):
    """out[lo:hi] = mean of rows[members, lo:hi]: block_mean's arithmetic (float32 sum
    in member order, times float32 1/n), so over all rows it is bitwise
    mean_rows_into. Returns the first block holding a non-finite mean (-1: none);
    a non-finite input makes its column's mean non-finite, so the check reads only the
    block of the result, in L1."""
    n = members.shape[0]
    inv = np.float32(1.0) / np.float32(n)
    for start in range(lo, hi, _MEAN_BLOCK):
        stop = min(start + _MEAN_BLOCK, hi)
        o = out[start:stop]
        first = rows[members[0], start:stop]
        for i in range(o.shape[0]):
            o[i] = first[i]
        for r in range(1, n):
            row = rows[members[r], start:stop]
            for i in range(o.shape[0]):
                o[i] += row[i]
        for i in range(o.shape[0]):
            o[i] *= inv
        if _nonfinite(o):
            return start
    return -1


@njit(cache=True, nogil=True)
def mean64_members(rows, chosen, lo, hi, out):
    """out[lo:hi] = mean of rows[chosen, lo:hi], summed in float64 in row order (one
    row: copied exactly; equal rows: that row exactly)."""
    n = chosen.shape[0]
    if n == 1:
        # Krum: float32(float64(x) / 1) is x, so the row is copied, without the pass
        # through a float64 buffer.
        src = rows[chosen[0], lo:hi]
        o = out[lo:hi]
        for i in range(o.shape[0]):
            o[i] = src[i]
        return
    acc = np.empty(_MEAN_BLOCK, np.float64)
    for start in range(lo, hi, _MEAN_BLOCK):
        stop = min(start + _MEAN_BLOCK, hi)
        o = out[start:stop]
        a = acc[: stop - start]
        first = rows[chosen[0], start:stop]
        for i in range(a.shape[0]):
            a[i] = first[i]
        for r in range(1, n):
            row = rows[chosen[r], start:stop]
            for i in range(a.shape[0]):
                a[i] += row[i]
        for i in range(o.shape[0]):
            o[i] = np.float32(a[i] / n)


# ------------------------------------------------------------------ coordinate-wise


@njit(cache=True, nogil=True)
def coordinate_wise(rows, members, lo, hi, network, trim, is_median, out):
    """out[lo:hi] = the median (``is_median``) or the ``trim``-trimmed mean of every
    column of rows[members]. Returns the first block holding a non-finite value (-1:
    none).

    "Gather each column's values and sort them", done a block of columns at a time and
    transposed: the block's member rows are copied into ``vals`` (n, width), then a
    sorting network (``network``: compare-exchange pairs (p, q), p < q) sorts every
    column at once, each compare-exchange being a min/max over two rows of the block:
    branch-free and vectorised, where an insertion sort per column branches on random
    data. A compare-exchange only ever permutes two values, so a NaN stays among the
    column's values; the check reads the gathered rows, since trimming could drop it.
    Each column's arithmetic depends only on that column: the result is bitwise the
    same whatever the block and slice boundaries.
    """
    n = members.shape[0]
    width = max(16, (_GATHER_FLOATS // n) // 16 * 16)
    vals = np.empty((n, width), np.float32)
    acc = np.empty(width, np.float64)
    for start in range(lo, hi, width):
        stop = min(start + width, hi)
        w = stop - start
        for r in range(n):
            src = rows[members[r], start:stop]
            dst = vals[r, :w]
            for i in range(w):
                dst[i] = src[i]
            if _nonfinite(dst):
                return start
        for k in range(network.shape[0]):
            p = vals[network[k, 0], :w]
            q = vals[network[k, 1], :w]
            for i in range(w):
                a = p[i]
                b = q[i]
                p[i] = a if a <= b else b
                q[i] = b if a <= b else a
        o = out[start:stop]
        if is_median and n % 2 == 1:
            mid = vals[n // 2, :w]
            for i in range(w):
                o[i] = mid[i]
        elif is_median:
            # The mean of the two middle values in float64: exact before the one
            # rounding to float32, and no overflow for values near the float32 limit.
            low = vals[n // 2 - 1, :w]
            high = vals[n // 2, :w]
            for i in range(w):
                o[i] = np.float32((np.float64(low[i]) + np.float64(high[i])) * 0.5)
        else:
            a = acc[:w]
            first = vals[trim, :w]
            for i in range(w):
                a[i] = first[i]
            for r in range(trim + 1, n - trim):
                row = vals[r, :w]
                for i in range(w):
                    a[i] += row[i]
            kept = n - 2 * trim
            for i in range(w):
                o[i] = np.float32(a[i] / kept)
    return -1


def sorting_network(n: int) -> np.ndarray:
    """Batcher's odd-even merge sort for n values as (p, q) compare-exchange pairs.

    Built for the next power of two; the pairs that touch a position >= n are dropped,
    which is the same as padding with +inf (a compare-exchange with +inf changes
    nothing, and +inf never leaves the top positions).
    """
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


# ------------------------------------------------------------------ the distance rules


@njit(cache=True, nogil=True)
def _combination(rows, members, coef, base_coef, base, start, stop, z):
    """z[:stop - start] = base_coef * base[start:stop] + sum_i coef[i] * rows[members[i],
    start:stop] in float64, added in member order (``base`` empty: no base term).

    The one formula for the current point of Weiszfeld and of centered clipping: the
    blocks of the distances and the slices of the result call it with the same
    coefficients, so a column gets the same bits whoever computes it.
    """
    n = stop - start
    zz = z[:n]
    if base.shape[0] > 0:
        src = base[start:stop]
        for i in range(n):
            zz[i] = base_coef * np.float64(src[i])
        r0 = 0
    else:
        first = rows[members[0], start:stop]
        c0 = coef[0]
        for i in range(n):
            zz[i] = c0 * np.float64(first[i])
        r0 = 1
    for r in range(r0, members.shape[0]):
        row = rows[members[r], start:stop]
        c = coef[r]
        for i in range(n):
            zz[i] += c * np.float64(row[i])


@njit(cache=True, nogil=True)
def combination_into(rows, members, coef, base_coef, base, lo, hi, out, also):
    """out[lo:hi] (and ``also``[lo:hi] when not empty) = float32 of
    :func:`_combination`: the result of Weiszfeld or of centered clipping."""
    z = np.empty(DISTANCE_BLOCK, np.float64)
    for start in range(lo, hi, DISTANCE_BLOCK):
        stop = min(start + DISTANCE_BLOCK, hi)
        _combination(rows, members, coef, base_coef, base, start, stop, z)
        o = out[start:stop]
        for i in range(o.shape[0]):
            o[i] = np.float32(z[i])
        if also.shape[0] > 0:
            a = also[start:stop]
            for i in range(a.shape[0]):
                a[i] = o[i]


@njit(cache=True, nogil=True)
def pair_partials(rows, members, b0, b1, parts):
    """parts[b, p] = |x_i - x_j|^2 over block b, for the member pairs i < j in order."""
    size = rows.shape[1]
    n = members.shape[0]
    acc = np.empty(_LANES, np.float64)
    for b in range(b0, b1):
        start = b * DISTANCE_BLOCK
        stop = min(start + DISTANCE_BLOCK, size)
        p = 0
        for i in range(n):
            xi = rows[members[i], start:stop]
            for j in range(i + 1, n):
                parts[b, p] = _sq_distance(xi, rows[members[j], start:stop], acc)
                p += 1


@njit(cache=True, nogil=True)
def point_partials(rows, members, coef, prev, base_coef, base, b0, b1, parts, norms):
    """Over each block b in [b0, b1), for z = the combination of ``coef`` (and of
    ``base``): parts[b, i] = |x_i - z|^2 for every member i; with ``norms`` (Weiszfeld)
    also parts[b, n] = |z|^2 and parts[b, n + 1] = |z - z_prev|^2, z_prev the
    combination of ``prev`` (0 when ``prev`` is empty)."""
    size = rows.shape[1]
    n = members.shape[0]
    z = np.empty(DISTANCE_BLOCK, np.float64)
    z_prev = np.empty(DISTANCE_BLOCK, np.float64)
    acc = np.empty(_LANES, np.float64)
    for b in range(b0, b1):
        start = b * DISTANCE_BLOCK
        stop = min(start + DISTANCE_BLOCK, size)
        w = stop - start
        _combination(rows, members, coef, base_coef, base, start, stop, z)
        for i in range(n):
            parts[b, i] = _sq_distance(rows[members[i], start:stop], z[:w], acc)
        if norms:
            parts[b, n] = _sq_norm(z[:w], acc)
            parts[b, n + 1] = 0.0
        if norms and prev.shape[0] > 0:
            _combination(rows, members, prev, base_coef, base, start, stop, z_prev)
            parts[b, n + 1] = _sq_distance(z[:w], z_prev[:w], acc)


@njit(cache=True, nogil=True)
def sum_blocks(parts, blocks, k):
    """The totals of the first ``k`` partial sums over ``blocks`` blocks, in block order."""
    totals = np.zeros(k, np.float64)
    for b in range(blocks):
        row = parts[b]
        for j in range(k):
            totals[j] += row[j]
    return totals
