"""PowerSGD (Vogels et al. 2019): ``compress=powersgd``, a compressed exchange the
workers run together.

For each weight matrix, worker i's M_i (its row's entries, plus its error-feedback
residual) is sent as rank-r factors, in two rounds: P_i = M_i Q, whose mean is
orthogonalised into P_hat; then Q_i = M_i^T P_hat, whose mean Q decodes the mean of
the M_i as P_hat Q^T and warm-starts the next call. Entries outside the matrices
(:func:`~fastdist.combiners.compression.powersgd_matrices`) are averaged as float32.
:class:`PowerSGDWorker` is one worker's side on the arena
(:meth:`~fastdist.combiners.compression.Compression.arrays`); :func:`powersgd_rows` is
the same computation in one process, bitwise.

A matrix j of the flat vector is row[off : off + n*m] viewed as (n, m), C order; its
factors are P_j (n, r) at [poff, poff + n*r) of the P vector and Q_j (m, r) at
[qoff, qoff + m*r) of the Q vector, both C order. ``fac`` holds one row (off, n, m, r,
poff, qoff) per matrix. Products accumulate in float64, in a fixed order, so every
worker (and powersgd_rows) gets the same bits; they are not BLAS calls, whose results
may depend on threads and alignment. Every worker computes the shared factors
redundantly, with the same kernels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numba import njit

from fastdist.combiners.compression import POWERSGD_STREAM, Compression
from fastdist.engine.allreduce import mean_rows_into

__all__ = ["PowerSGDWorker", "powersgd_rows"]


def _factors(comp: Compression, matrices, size: int | None = None):
    """(fac, length of P, length of Q) for ``matrices``; checks they fit and do not
    overlap."""
    fac = np.zeros((len(matrices), 6), np.int64)
    n_p = n_q = 0
    for j, (off, n, m) in enumerate(matrices):
        off, n, m = int(off), int(n), int(m)
        if off < 0 or n < 1 or m < 1:
            raise ValueError(f"PowerSGD matrix {j} (offset {off}, {n} x {m}) is not valid")
        r = comp.matrix_rank(n, m)
        fac[j] = off, n, m, r, n_p, n_q
        n_p, n_q = n_p + n * r, n_q + m * r
    spans = sorted((int(off), int(off) + int(n) * int(m)) for off, n, m in matrices)
    for (_, stop), (start, _) in zip(spans, spans[1:]):
        if start < stop:
            raise ValueError(f"PowerSGD matrices overlap: {spans}")
    if size is not None and spans and spans[-1][1] > size:
        raise ValueError(f"PowerSGD matrices {spans} do not fit in {size} values")
    return fac, n_p, n_q


def _gaps(fac: np.ndarray, size: int) -> list[tuple[int, int]]:
    """The [start, stop) segments outside every matrix: sent as float32."""
    out, pos = [], 0
    for off, n, m in sorted((int(f[0]), int(f[1]), int(f[2])) for f in fac):
        if off > pos:
            out.append((pos, off))
        pos = off + n * m
    if pos < size:
        out.append((pos, size))
    return out


def _first_q(seed: int, n_q: int) -> np.ndarray:
    """The first Q: standard normal, the same in every worker."""
    return np.random.default_rng([int(seed), POWERSGD_STREAM]).standard_normal(
        n_q, dtype=np.float32
    )


def _start_q(q: np.ndarray, q0: np.ndarray, fac: np.ndarray) -> None:
    """Each matrix's Q is the warm start; where it is all zero (the first call: the
    arena starts zeroed; or a matrix whose every M_i was 0, whose Q would stay 0 for
    ever) it starts again from ``q0``. A function of the arena alone: resumed runs
    agree."""
    for m, r, qoff in fac[:, [2, 3, 5]]:
        part = q[qoff : qoff + m * r]
        if not part.any():
            part[:] = q0[qoff : qoff + m * r]


@njit(cache=True, nogil=True)
def _add_residual(row, residual, fac):
    """row += residual on the matrices' entries (elsewhere the residual is 0)."""
    for j in range(fac.shape[0]):
        off, size = fac[j, 0], fac[j, 1] * fac[j, 2]
        r, e = row[off : off + size], residual[off : off + size]
        for i in range(size):
            r[i] += e[i]


@njit(cache=True, nogil=True)
def _project(row, q, fac, p):
    """P_j = M_j Q_j for every matrix j."""
    for j in range(fac.shape[0]):
        off, n, m, r, poff, qoff = fac[j, 0], fac[j, 1], fac[j, 2], fac[j, 3], fac[j, 4], fac[j, 5]
        acc = np.empty(r, np.float64)
        for i in range(n):
            for t in range(r):
                acc[t] = 0.0
            base = off + i * m
            for k in range(m):
                v = np.float64(row[base + k])
                qk = qoff + k * r
                for t in range(r):
                    acc[t] += v * q[qk + t]
            for t in range(r):
                p[poff + i * r + t] = acc[t]


@njit(cache=True, nogil=True)
def _orthogonalise(p, fac, p_hat):
    """P_hat_j: orthonormal columns spanning P_j's (Gram-Schmidt in float64, each
    column projected out twice, which keeps them orthogonal to working precision). A
    column with nothing left becomes 0."""
    for j in range(fac.shape[0]):
        n, r, poff = fac[j, 1], fac[j, 3], fac[j, 4]
        w = np.empty((r, n), np.float64)  # column t of P_j is w[t]
        for i in range(n):
            for t in range(r):
                w[t, i] = p[poff + i * r + t]
        for t in range(r):
            col = w[t]
            for _ in range(2):
                for s in range(t):
                    prev = w[s]
                    d = 0.0
                    for i in range(n):
                        d += prev[i] * col[i]
                    for i in range(n):
                        col[i] -= d * prev[i]
            total = 0.0
            for i in range(n):
                total += col[i] * col[i]
            norm = math.sqrt(total)
            inv = 1.0 / norm if norm > 0.0 else 0.0
            for i in range(n):
                col[i] *= inv
        for i in range(n):
            for t in range(r):
                p_hat[poff + i * r + t] = w[t, i]


@njit(cache=True, nogil=True)
def _back_project(row, p_hat, fac, q):
    """Q_j = M_j^T P_hat_j for every matrix j."""
    for j in range(fac.shape[0]):
        off, n, m, r, poff, qoff = fac[j, 0], fac[j, 1], fac[j, 2], fac[j, 3], fac[j, 4], fac[j, 5]
        acc = np.zeros(m * r, np.float64)
        ph = np.empty(r, np.float64)
        for i in range(n):
            for t in range(r):
                ph[t] = p_hat[poff + i * r + t]
            base = off + i * m
            for k in range(m):
                v = np.float64(row[base + k])
                for t in range(r):
                    acc[k * r + t] += v * ph[t]
        for t in range(m * r):
            q[qoff + t] = acc[t]


@njit(cache=True, nogil=True)
def _decode(p_hat, q, fac, lo, hi, out, minuend, subtract):
    """For the matrices' entries in [lo, hi): out = P_hat Q^T, or with ``subtract``
    out = minuend - P_hat Q^T (the residual). Only the rows of each matrix that meet
    the slice are computed, and of its first and last row only the columns inside."""
    for j in range(fac.shape[0]):
        off, n, m, r, poff, qoff = fac[j, 0], fac[j, 1], fac[j, 2], fac[j, 3], fac[j, 4], fac[j, 5]
        a, b = max(lo, off), min(hi, off + n * m)
        if a >= b:
            continue
        for i in range((a - off) // m, (b - 1 - off) // m + 1):
            base = off + i * m
            pi = poff + i * r
            for k in range(max(a - base, 0), min(b - base, m)):
                qk = qoff + k * r
                d = 0.0
                for t in range(r):
                    d += np.float64(p_hat[pi + t]) * q[qk + t]
                if subtract:
                    out[base + k] = minuend[base + k] - np.float32(d)
                else:
                    out[base + k] = d


class PowerSGDWorker:
    """One worker's side of PowerSGD (Vogels et al. 2019, Algorithm 1, with error
    feedback and warm start) on the arena.

    ``arrays`` holds :meth:`Compression.arrays`' arrays; ``row`` is this worker's row
    of every per-worker array; it writes ``out[lo:hi]``; ``barrier`` is the workers'
    barrier; ``seed`` draws the first Q (the same in every worker).

    Assumption: the caller waits on the barrier after :meth:`reduce` before anyone
    reads all of ``out``, writes its next row, or calls :meth:`reduce` again. That
    barrier is what lets the P, Q and published rows be reused at the next call: nobody
    writes the next call's P_i (or its next vector) before everyone has read this
    call's.
    """

    def __init__(
        self,
        comp: Compression,
        matrices,
        arrays: Mapping[str, np.ndarray],
        row: int,
        lo: int,
        hi: int,
        barrier,
        seed: int,
    ) -> None:
        if not comp.is_collective:
            raise ValueError(f"PowerSGDWorker needs compress=powersgd, not {comp.kind}")
        self.comp, self.row, self.lo, self.hi = comp, int(row), int(lo), int(hi)
        self.barrier = barrier
        self.matrices = tuple(matrices)
        self.fac, n_p, n_q = _factors(comp, self.matrices)
        self.residual = arrays["compress_residuals"][self.row] if comp.error_feedback else None
        self.p_rows = self.q_rows = self.q = None
        if n_q:
            self.p_rows, self.q_rows = arrays["compress_p"], arrays["compress_q"]
            self.q = arrays["compress_warm_q"][self.row]  # this worker's copy of Q
        self._q0 = _first_q(seed, n_q)
        self._p_mean = np.empty(n_p, np.float32)
        self.p_hat = np.empty(n_p, np.float32)  # this call's P_hat (also for tests)
        self._gaps: list[tuple[int, int]] | None = None

    def reduce(self, rows: np.ndarray, members_all: None, out: np.ndarray) -> None:
        """Collective, after every row is written: out[lo:hi] = the decoded mean.

        Reads this worker's own row of ``rows`` (adding its residual in place), the P
        and Q rows, and for the entries outside the matrices the slice [lo, hi) of
        every row (their plain mean, in row order). ``members_all``: every row takes
        part (PowerSGD is refused with anything else).
        """
        own, fac = rows[self.row], self.fac
        if self._gaps is None:
            _factors(self.comp, self.matrices, rows.shape[1])  # they fit in a row
            self._gaps = _gaps(fac, rows.shape[1])
        if self.q is not None:
            if self.residual is not None:
                _add_residual(own, self.residual, fac)  # own row is M_i now
            _start_q(self.q, self._q0, fac)
            _project(own, self.q, fac, self.p_rows[self.row])
            self.barrier.wait()  # every P_i is written
            # Every worker averages all of P (it is small), in row order: the same bits.
            mean_rows_into(self.p_rows, self._p_mean, 0, self._p_mean.shape[0])
            _orthogonalise(self._p_mean, fac, self.p_hat)
            q_own = self.q_rows[self.row]
            _back_project(own, self.p_hat, fac, q_own)
            self.barrier.wait()  # every Q_i is written
            mean_rows_into(self.q_rows, self.q, 0, self.q.shape[0])  # next call's warm start
            _decode(self.p_hat, self.q, fac, self.lo, self.hi, out, out, False)
            if self.residual is not None:  # what was not sent: M_i - P_hat Q_i^T
                _decode(self.p_hat, q_own, fac, 0, own.shape[0], self.residual, own, True)
        for a, b in self._gaps:
            a, b = max(a, self.lo), min(b, self.hi)
            if a < b:
                mean_rows_into(rows, out, a, b)


def powersgd_rows(
    comp: Compression,
    matrices,
    rows: np.ndarray,
    residuals: np.ndarray | None = None,
    q: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """PowerSGD's exchange of all ``rows`` in one process: (the decoded mean, the new
    warm-start Q), bitwise what the workers' :meth:`PowerSGDWorker.reduce` compute.

    ``residuals`` (one row per worker), where given, are added to the rows first and
    replaced by the new residuals in place; ``q`` is the previous call's Q (None: the
    first call, Q drawn from ``seed``). ``rows`` are left unchanged.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    workers, size = rows.shape
    fac, n_p, n_q = _factors(comp, matrices, size)
    out = np.empty(size, np.float32)
    new_q = np.zeros(n_q, np.float32) if q is None else np.array(q, np.float32)
    if n_q:
        m_rows = rows.copy()
        if residuals is not None:
            for i in range(workers):
                _add_residual(m_rows[i], residuals[i], fac)
        _start_q(new_q, _first_q(seed, n_q), fac)
        p_rows = np.empty((workers, n_p), np.float32)
        for i in range(workers):
            _project(m_rows[i], new_q, fac, p_rows[i])
        p_mean, p_hat = np.empty(n_p, np.float32), np.empty(n_p, np.float32)
        mean_rows_into(p_rows, p_mean, 0, n_p)
        _orthogonalise(p_mean, fac, p_hat)
        q_rows = np.empty((workers, n_q), np.float32)
        for i in range(workers):
            _back_project(m_rows[i], p_hat, fac, q_rows[i])
        mean_rows_into(q_rows, new_q, 0, n_q)
        _decode(p_hat, new_q, fac, 0, size, out, out, False)
        if residuals is not None:
            for i in range(workers):
                _decode(p_hat, q_rows[i], fac, 0, size, residuals[i], m_rows[i], True)
    for a, b in _gaps(fac, size):
        mean_rows_into(rows, out, a, b)
    return out, new_q
