"""Robust aggregation rules (``aggregate=``), computed in shared memory slice by slice.

N workers each publish a float32 row into ``rows`` (N, P); every worker then calls
:meth:`AggregatorWorker.reduce` and writes columns [lo, hi) of the result, like the
allreduce (:mod:`fastdist.engine.allreduce`). The rules:

* ``mean``: the plain mean (bitwise :func:`~fastdist.engine.allreduce.mean_rows_into`
  over all rows);
* ``median``, ``trimmed_mean``: coordinate-wise (Yin et al. 2018). Each column is
  independent, so each worker does its own slice and meets nobody;
* ``krum``, ``multi_krum`` (Blanchard et al. 2017), ``geometric_median`` (Weiszfeld's
  iteration, Pillutla et al. 2019's RFA) and ``centered_clip`` (Karimireddy et al.
  2021): they need distances between whole rows, so the workers meet.

Distances are what makes a sliced computation depend on the slicing: a sum of squares
over [lo, hi) depends on where lo and hi fall. So the columns are cut into FIXED blocks
of :data:`DISTANCE_BLOCK` columns; the squared distances of a block are summed in
float64, in an order fixed by the code (lanes, then a tree: see
:mod:`fastdist.combiners.aggregator_kernels`), by the worker whose [lo, hi) holds the
block's first column (it reads past hi if the block does), into row ``b`` of an arena
array of partial sums. After a barrier every worker adds the rows in block order. The
totals, and every decision taken from them, are then the same in every worker and
whatever the number of workers: a node of 2 workers and a node of 7 reduce the same
rows to the same bits, as dist=mpi needs (each node reduces every row itself).

The iterative rules never store their current point: Weiszfeld's z and centered
clipping's v are always combinations ``alpha * centre + sum_i a_i x_i`` of the rows
(and of the previous centre), whose coefficients every worker knows after each
meeting. A worker recomputes the point, column by column, where it needs it: in its
blocks for the distances, in its slice for the result. No worker ever reads a value
another has just written, so one barrier per iteration is enough.

This module holds the rules' records (:class:`Aggregate` and a factory per rule), the
worker's side of the collective (:class:`AggregatorWorker`: the meetings and the
decisions) and :func:`aggregate_rows`; the Numba kernels that read the rows live in
:mod:`fastdist.combiners.aggregator_kernels`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fastdist.combiners.aggregator_kernels import (
    DISTANCE_BLOCK,
    combination_into,
    coordinate_wise,
    mean64_members,
    mean_members,
    pair_partials,
    point_partials,
    sorting_network,
    sum_blocks,
)
from fastdist.errors import ConfigError, DivergenceError

__all__ = [
    "DISTANCE_BLOCK",
    "RULES",
    "Aggregate",
    "AggregatorWorker",
    "aggregate_rows",
    "centered_clip",
    "geometric_median",
    "krum",
    "mean",
    "median",
    "multi_krum",
    "trimmed_mean",
]

RULES = (
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "geometric_median",
    "centered_clip",
)
_DISTANCE_RULES = ("krum", "multi_krum", "geometric_median", "centered_clip")
_COORDINATE_RULES = ("median", "trimmed_mean")


# ------------------------------------------------------------------ the settings


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_int(name: str, value, least: int, optional: bool = False) -> int | None:
    if optional and value is None:
        return None
    if not _is_int(value) or value < least:
        want = f"an integer >= {least}" + (" or null" if optional else "")
        raise ConfigError(f"aggregate.{name} must be {want}, got {value!r}")
    return int(value)


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        raise ConfigError(f"aggregate.{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"aggregate.{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Aggregate:
    """The aggregation rule and its options. Picklable (it travels to the workers).

    Build it with the factory of its rule (:func:`median`, :func:`krum`, ...), which
    validates what does not depend on the number of rows; :meth:`check` validates the
    rest once that number is known.
    """

    rule: str = "mean"
    trim: int | None = None  # trimmed_mean: values cut at EACH end per coordinate; None: f
    f: int = 1  # Byzantine rows the rule is built to tolerate
    m: int | None = None  # multi_krum: rows averaged; None: n - f
    tol: float = 1e-6  # geometric_median: stop when z moves <= tol * max(1, |z|)
    max_iter: int = 100  # geometric_median: at most this many Weiszfeld steps
    tau: float = 1.0  # centered_clip: the clipping radius
    iters: int = 3  # centered_clip: clipping iterations per call

    @property
    def uses_distances(self) -> bool:
        """The rule needs distances between whole rows: the workers meet inside it."""
        return self.rule in _DISTANCE_RULES

    @property
    def coordinate_wise(self) -> bool:
        """Each column of the result depends only on that column of the rows."""
        return self.rule in _COORDINATE_RULES

    @property
    def linear(self) -> bool:
        """The result is a fixed linear combination of the rows (the mean)."""
        return self.rule == "mean"

    @property
    def trim_count(self) -> int:
        """trimmed_mean's cut at each end (``trim``, else ``f``)."""
        return self.f if self.trim is None else self.trim

    def multi_count(self, n_rows: int) -> int:
        """The rows multi-Krum averages among ``n_rows`` (``m``, else n - f); 1 for Krum."""
        if self.rule == "krum":
            return 1
        return n_rows - self.f if self.m is None else self.m

    def check(self, n_rows: int) -> None:
        """A one-line ConfigError when the rule cannot work with ``n_rows`` rows."""
        if self.rule not in RULES:
            raise ConfigError(
                f"aggregate.rule must be one of {', '.join(RULES)}, got {self.rule!r}"
            )
        _check_int("f", self.f, 0)
        _check_int("trim", self.trim, 0, optional=True)
        _check_int("m", self.m, 1, optional=True)
        _check_positive("tol", self.tol)
        _check_int("max_iter", self.max_iter, 1)
        _check_positive("tau", self.tau)
        _check_int("iters", self.iters, 1)
        if not _is_int(n_rows) or n_rows < 1:
            raise ConfigError(f"aggregate={self.rule} needs at least one row, got {n_rows!r}")
        if self.rule == "trimmed_mean" and 2 * self.trim_count >= n_rows:
            t = self.trim_count
            origin = "trim" if self.trim is not None else "trim (null: f)"
            raise ConfigError(
                f"aggregate=trimmed_mean: {origin}={t} cuts {2 * t} of the {n_rows} values "
                f"of every coordinate; it needs 2 * trim < {n_rows} (the rows taking part)"
            )
        if self.rule in ("krum", "multi_krum") and n_rows < 2 * self.f + 3:
            raise ConfigError(
                f"aggregate={self.rule} with f={self.f} needs at least 2f + 3 = "
                f"{2 * self.f + 3} rows (Blanchard et al. 2017), got {n_rows}"
            )
        if self.rule == "multi_krum" and not 1 <= self.multi_count(n_rows) <= n_rows - self.f:
            raise ConfigError(
                f"aggregate.m={self.m} must be between 1 and n - f = {n_rows - self.f} "
                f"(n={n_rows} rows, f={self.f})"
            )

    def arrays(self, workers: int, size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Name -> (shape, dtype) of the arena arrays the rule needs for ``workers``
        rows of ``size`` floats.

        ``aggregate_partials`` (2, blocks, k) float64: each distance block's partial
        sums, in two copies used alternately by successive meetings (see
        :meth:`AggregatorWorker._meet`); k = the pairs of rows (Krum), the rows plus
        |z|^2 and |z - z_prev|^2 (Weiszfeld), the rows (centered clipping).
        ``aggregate_center`` (size,) float32: centered clipping's centre, the last
        aggregate (0 at the start; checkpointed).
        """
        if not self.uses_distances:
            return {}
        blocks = max(1, -(-size // DISTANCE_BLOCK))
        if self.rule in ("krum", "multi_krum"):
            k = max(1, workers * (workers - 1) // 2)
        elif self.rule == "geometric_median":
            k = workers + 2
        else:
            k = workers
        arrays = {"aggregate_partials": ((2, blocks, k), np.dtype(np.float64))}
        if self.rule == "centered_clip":
            arrays["aggregate_center"] = ((size,), np.dtype(np.float32))
        return arrays

    @property
    def checkpointed(self) -> tuple[str, ...]:
        """The arrays a checkpoint must keep: the centre, which carries over calls."""
        return ("aggregate_center",) if self.rule == "centered_clip" else ()


# One factory per rule: their keyword arguments are the rule's options (Hydra's schema
# of conf/aggregate/<rule>.yaml is generated from the signature).


def mean() -> Aggregate:
    """The plain mean of the rows."""
    return Aggregate(rule="mean")


def median() -> Aggregate:
    """The coordinate-wise median (the mean of the two middle values for an even count)."""
    return Aggregate(rule="median")


def trimmed_mean(trim: int | None = None, f: int = 1) -> Aggregate:
    """Per coordinate, the mean of the values left when the ``trim`` smallest and the
    ``trim`` largest are dropped (``trim`` null: ``f``); needs 2 * trim < n."""
    return Aggregate(
        rule="trimmed_mean",
        trim=_check_int("trim", trim, 0, optional=True),
        f=_check_int("f", f, 0),
    )


def krum(f: int = 1) -> Aggregate:
    """The row whose n - f - 2 nearest rows are closest (Krum); needs n >= 2f + 3."""
    return Aggregate(rule="krum", f=_check_int("f", f, 0))


def multi_krum(f: int = 1, m: int | None = None) -> Aggregate:
    """The mean of the ``m`` rows with the best Krum scores (``m`` null: n - f)."""
    return Aggregate(rule="multi_krum", f=_check_int("f", f, 0), m=_check_int("m", m, 1, True))


def geometric_median(tol: float = 1e-6, max_iter: int = 100) -> Aggregate:
    """The geometric median by Weiszfeld's iteration from the coordinate-wise mean."""
    return Aggregate(
        rule="geometric_median",
        tol=_check_positive("tol", tol),
        max_iter=_check_int("max_iter", max_iter, 1),
    )


def centered_clip(tau: float = 1.0, iters: int = 3) -> Aggregate:
    """``iters`` steps of v <- v + mean_i clip_tau(x_i - v) from the previous aggregate."""
    return Aggregate(
        rule="centered_clip", tau=_check_positive("tau", tau), iters=_check_int("iters", iters, 1)
    )


# ------------------------------------------------------------------ the collective


def _first_nonfinite_row(rows: np.ndarray, members: np.ndarray, start: int, stop: int) -> int:
    """The first member whose columns [start, stop) hold a NaN or an inf (-1: none).
    Only on the error path: the kernels have already found the block."""
    for m in members:
        if not np.isfinite(rows[m, start:stop]).all():
            return int(m)
    return -1


class _NoBarrier:
    def wait(self) -> None:
        pass


class AggregatorWorker:
    """One worker's side of the aggregation: it writes columns [lo, hi) of the result.

    ``arrays`` holds (at least) the arrays of :meth:`Aggregate.arrays`, the same ones
    in every worker (the arena); ``barrier`` is the workers' barrier. Every worker of
    the collective must call :meth:`reduce` the same number of times with the same
    rows and members: the distance rules meet inside it, the same number of times in
    every worker.
    """

    def __init__(
        self, aggregate: Aggregate, arrays: Mapping[str, np.ndarray], lo: int, hi: int, barrier
    ) -> None:
        if not 0 <= lo <= hi:
            raise ValueError(f"columns [{lo}, {hi}) are not a slice")
        self.aggregate, self.lo, self.hi, self.barrier = aggregate, int(lo), int(hi), barrier
        self.parts = arrays["aggregate_partials"] if aggregate.uses_distances else None
        self.center = arrays["aggregate_center"] if aggregate.rule == "centered_clip" else None
        self._networks: dict[int, np.ndarray] = {}
        self._empty = np.empty(0, np.float32)
        self._no_coef = np.empty(0, np.float64)
        # Meetings so far: the copy of aggregate_partials the next one writes. Every
        # worker meets as often as the others, so they all agree on it.
        self._meetings = 0

    # ----------------------------------------------------------- entry point

    def reduce(self, rows: np.ndarray, members: np.ndarray, out: np.ndarray) -> None:
        """Collective: out[lo:hi] = the rule over rows[members], once every row of
        ``rows`` is current. Returns when this worker's slice of ``out`` is written
        (read the others' after a barrier).

        ``members``: the sorted rows taking part. A NaN or an inf in a member's row
        raises DivergenceError (in every worker for the distance rules, in the workers
        whose slice holds it for the others); rows outside ``members`` are never read.
        """
        rows, members = self._validated(rows, members, out)
        agg = self.aggregate
        agg.check(members.shape[0])  # fewer members than the rule needs: one line
        lo, hi = self.lo, self.hi
        if agg.rule == "mean":
            self._raise_if_bad(mean_members(rows, members, lo, hi, out), rows, members)
        elif agg.coordinate_wise:
            n = members.shape[0]
            network = self._networks.get(n)
            if network is None:
                network = self._networks[n] = sorting_network(n)
            bad = coordinate_wise(
                rows, members, lo, hi, network, agg.trim_count, agg.rule == "median", out
            )
            self._raise_if_bad(bad, rows, members)
        elif agg.rule in ("krum", "multi_krum"):
            self._krum(rows, members, out)
        elif agg.rule == "geometric_median":
            self._geometric_median(rows, members, out)
        else:
            self._centered_clip(rows, members, out)

    def _validated(self, rows, members, out):
        if rows.ndim != 2 or rows.dtype != np.float32 or not rows.flags.c_contiguous:
            raise ValueError("rows must be a C-contiguous float32 (N, P) array")
        if out.shape != (rows.shape[1],) or out.dtype != np.float32:
            raise ValueError(f"out must be a float32 vector of {rows.shape[1]} values")
        if self.hi > rows.shape[1]:
            raise ValueError(f"columns [{self.lo}, {self.hi}) exceed the {rows.shape[1]} of rows")
        members = np.asarray(members, dtype=np.int64)
        if members.ndim != 1 or members.size == 0:
            raise ValueError("members must be a non-empty vector of row indices")
        if members[0] < 0 or members[-1] >= rows.shape[0] or np.any(np.diff(members) <= 0):
            raise ValueError(f"members must be sorted, distinct rows of [0, {rows.shape[0]})")
        if self.parts is not None:
            blocks = -(-rows.shape[1] // DISTANCE_BLOCK)
            if self.parts.shape[1] < blocks or self.parts.shape[2] < self._partials_needed(
                members.shape[0]
            ):
                raise ValueError(
                    f"aggregate_partials {self.parts.shape} is too small for rows {rows.shape}"
                )
        return rows, np.ascontiguousarray(members)

    def _partials_needed(self, n: int) -> int:
        if self.aggregate.rule in ("krum", "multi_krum"):
            return n * (n - 1) // 2
        return n + 2 if self.aggregate.rule == "geometric_median" else n

    def _raise_if_bad(self, start: int, rows, members) -> None:
        """``start``: where a kernel met a non-finite value in this worker's columns
        (-1: nowhere)."""
        if start >= 0:
            self._diverged(_first_nonfinite_row(rows, members, start, self.hi))

    def _diverged(self, row: int, what: str | None = None) -> None:
        rule = self.aggregate.rule
        if row >= 0:
            raise DivergenceError(
                f"aggregate={rule}: row {row} holds a non-finite value (NaN or inf); "
                "a diverged or attacking worker?"
            )
        raise DivergenceError(
            f"aggregate={rule}: {what or 'the result overflows float32'} (NaN or inf)"
        )

    # ----------------------------------------------------------- meetings

    def _blocks(self, size: int) -> tuple[int, int, int]:
        """(first, end, total): the distance blocks whose first column is in [lo, hi)."""
        total = -(-size // DISTANCE_BLOCK)
        if self.lo == self.hi:
            return total, total, total
        return -(-self.lo // DISTANCE_BLOCK), -(-self.hi // DISTANCE_BLOCK), total

    def _partials(self) -> np.ndarray:
        """The copy of aggregate_partials this meeting writes.

        Meetings alternate between the two copies. A worker writes copy c at meeting t
        only after passing the barrier of meeting t - 1; every worker reads copy c of
        meeting t - 2 right after that meeting's barrier and before arriving at
        meeting t - 1's. So nobody overwrites partial sums another is still adding, with
        one barrier per meeting (within a call, e.g. Weiszfeld's iterations, and across
        calls alike).
        """
        return self.parts[self._meetings % 2]

    def _meet(self, parts: np.ndarray, blocks: int, k: int) -> np.ndarray:
        """After writing this worker's blocks of ``parts``: wait for the others', then
        the totals, added in block order (the same in every worker)."""
        self.barrier.wait()
        self._meetings += 1
        return sum_blocks(parts, blocks, k)

    def _check_totals(self, totals, parts, blocks, rows, members, what: str) -> None:
        """The totals every worker holds: non-finite exactly when a member row (or the
        centre) holds a NaN or an inf, since squares of float32 values cannot overflow
        float64. Every worker sees the same totals, so all of them raise, and name the
        same row: the first member with a non-finite value in the first block whose
        partial sums are non-finite."""
        if np.isfinite(totals).all():
            return
        first = int(np.argmax(~np.isfinite(parts[:blocks]).all(axis=1)))
        start = first * DISTANCE_BLOCK
        row = _first_nonfinite_row(rows, members, start, min(start + DISTANCE_BLOCK, rows.shape[1]))
        self._diverged(row, what)

    # ----------------------------------------------------------- the rules

    def _krum(self, rows, members, out) -> None:
        agg, n = self.aggregate, members.shape[0]
        b0, b1, blocks = self._blocks(rows.shape[1])
        parts = self._partials()
        pair_partials(rows, members, b0, b1, parts)
        k = n * (n - 1) // 2
        totals = self._meet(parts, blocks, k)
        self._check_totals(totals, parts[:, :k], blocks, rows, members, "a distance overflows")
        # The n x n distances as Python floats (n is small: NumPy's per-call costs
        # were most of this method's time); totals lists the pairs i < j in order.
        pair = iter(totals.tolist())
        dist = [[0.0] * n for _ in range(n)]
        for i in range(n):
            for j in range(i + 1, n):
                dist[i][j] = dist[j][i] = next(pair)
        nearest = n - agg.f - 2
        scores = []
        for i in range(n):
            total = 0.0
            for d in sorted(dist[i][:i] + dist[i][i + 1 :])[:nearest]:
                total += d  # smallest first: one order in every worker
            scores.append(total)
        order = sorted(range(n), key=lambda i: (scores[i], i))  # ties: the lower row
        chosen = np.sort(members[order[: agg.multi_count(n)]])
        mean64_members(rows, chosen, self.lo, self.hi, out)

    def _geometric_median(self, rows, members, out) -> None:
        """Weiszfeld from the coordinate-wise mean: z <- sum_i w_i x_i / sum_i w_i with
        w_i = 1 / max(|x_i - z|, 1e-12 * (1 + |z|)). The guard keeps a row that z has
        reached (distance 0) from taking an infinite weight; it is relative to |z| so
        that it scales with the vectors, and 1 + keeps it positive at z = 0. Stops when
        a step moves z by <= tol * max(1, |z|), or after max_iter steps.

        Meeting t returns the distances from z_t, |z_t| and |z_t - z_(t-1)| together,
        so the test of step t and the weights of step t + 1 cost one pass and one
        barrier.
        """
        agg, n = self.aggregate, members.shape[0]
        b0, b1, blocks = self._blocks(rows.shape[1])
        coef = np.full(n, 1.0 / n)
        prev = self._no_coef
        for step in range(agg.max_iter + 1):
            parts = self._partials()
            point_partials(rows, members, coef, prev, 0.0, self._empty, b0, b1, parts, True)
            totals = self._meet(parts, blocks, n + 2)
            self._check_totals(totals, parts[:, : n + 2], blocks, rows, members, "z overflows")
            dist = np.sqrt(totals[:n])
            norm, move = math.sqrt(totals[n]), math.sqrt(totals[n + 1])
            if step and (move <= agg.tol * max(1.0, norm) or step == agg.max_iter):
                break
            weights = 1.0 / np.maximum(dist, 1e-12 * (1.0 + norm))
            total = 0.0
            for w in weights:  # member order: one sum in every worker
                total += float(w)
            prev, coef = coef, weights / total
        combination_into(rows, members, coef, 0.0, self._empty, self.lo, self.hi, out, self._empty)

    def _centered_clip(self, rows, members, out) -> None:
        """v <- v + mean_i (x_i - v) * min(1, tau / |x_i - v|), ``iters`` times, from
        v = aggregate_center; then out = v and aggregate_center = v.

        v is alpha * centre + sum_i a_i x_i: a step maps (alpha, a) to (c * alpha,
        c * a + s / n) with s_i the clip factors and c = 1 - sum(s) / n.

        The centre is written only at the end, each worker its own slice, after the
        last meeting: no worker reads it past its slice after that in this call. In the
        next call the others read this slice (their blocks reach past their hi) only
        after the meeting that makes the rows current, which every worker reaches after
        returning from this call.
        """
        agg, n = self.aggregate, members.shape[0]
        b0, b1, blocks = self._blocks(rows.shape[1])
        center = self.center
        if center.shape != (rows.shape[1],):
            raise ValueError(f"aggregate_center {center.shape} does not match rows {rows.shape}")
        alpha, coef = 1.0, np.zeros(n)
        for _ in range(agg.iters):
            parts = self._partials()
            point_partials(rows, members, coef, self._no_coef, alpha, center, b0, b1, parts, False)
            totals = self._meet(parts, blocks, n)
            self._check_totals(
                totals,
                parts[:, :n],
                blocks,
                rows,
                members,
                "the centre (aggregate_center) is not finite",
            )
            dist = np.sqrt(totals)
            clip = np.ones(n)
            far = dist > agg.tau
            clip[far] = agg.tau / dist[far]
            total = 0.0
            for s in clip:
                total += float(s)
            shrink = 1.0 - total / n
            alpha, coef = alpha * shrink, coef * shrink + clip / n
        combination_into(rows, members, coef, alpha, center, self.lo, self.hi, out, center)


def aggregate_rows(
    aggregate: Aggregate, rows: np.ndarray, members: np.ndarray | None = None
) -> np.ndarray:
    """The rule over ``rows`` (N, P) (or rows[members]), whole, in one process: for
    one-shot averaging and for tests. Centered clipping starts from 0 here."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError(f"rows must be 2-D (N, P), got shape {rows.shape}")
    members = np.arange(rows.shape[0]) if members is None else np.asarray(members, np.int64)
    arrays = {
        name: np.zeros(shape, dtype)
        for name, (shape, dtype) in aggregate.arrays(rows.shape[0], rows.shape[1]).items()
    }
    out = np.empty(rows.shape[1], np.float32)
    AggregatorWorker(aggregate, arrays, 0, rows.shape[1], _NoBarrier()).reduce(rows, members, out)
    return out
