"""What happens to the rows workers publish before they are combined: compression,
simulated Byzantine workers, and the aggregation rule (``compress=``, ``byzantine.*``,
``aggregate=``).

One :class:`Reduction` rides on a combiner's exchange (``Exchange.reduction``); the
exchanges that average (:func:`~fastdist.combiners.exchange.gradient_mean`,
:func:`~fastdist.combiners.exchange.periodic_average`,
:class:`~fastdist.combiners.rounds.Rounds`) hand their rows to a
:class:`ReductionWorker` instead of taking the mean themselves, and one-shot averaging
(``weight_avg``) applies the same record to the final rows (:func:`one_shot_reduce`).

The order at a sync, in every worker:

1. ``publish``: the worker's own row (its gradient, or its update theta_i - anchor)
   becomes what it would send: compressed in place, with error feedback (the
   compressor's residual row, kept by checkpoints); an attacker replaces it
   (sign_flip, scaled, gaussian). This happens before the rows meet, so under
   ``dist=mpi`` the node coordinators gather exactly what was sent.
2. The exchange's ``meet()``: every row is current.
3. ``reduce``: omniscient attackers (alie, ipm) overwrite their rows from the honest
   ones, slice by slice, then one barrier; PowerSGD's two rounds, or the aggregation
   rule, write slice [lo, hi) of the result. Everything after the meeting is a pure
   function of the rows, computed the same way on every machine, so dist=mpi needs no
   further gathering (PowerSGD's extra rounds do, so it is refused under dist=mpi).

A label-flipping attacker trains on flipped labels (the worker loop asks
:meth:`Reduction.flips_labels`) and publishes its honest-looking result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from fastdist.combiners.aggregators import Aggregate, AggregatorWorker, aggregate_rows
from fastdist.combiners.attacks import Byzantine, attack_omniscient, attack_own_row
from fastdist.combiners.base import Combiner
from fastdist.combiners.compression import Compression, compress_row
from fastdist.combiners.powersgd import PowerSGDWorker
from fastdist.errors import ConfigError

__all__ = ["Reduction", "ReductionWorker", "anchored", "one_shot_reduce", "with_reduction"]


@dataclass(frozen=True)
class Reduction:
    """Compression, attackers and the aggregation rule of one run. Picklable."""

    aggregate: Aggregate = field(default_factory=Aggregate)
    compression: Compression = field(default_factory=Compression)
    byzantine: Byzantine = field(default_factory=Byzantine)
    # PowerSGD's (offset, n, m) matrices of the model's flat layout (set with the model).
    matrices: tuple[tuple[int, int, int], ...] = ()
    seed: int = 0
    workers: int = 0  # every node's workers (the attackers' z_max depends on it)

    @property
    def active(self) -> bool:
        """Whether anything differs from the plain mean of what the workers produced."""
        return (
            self.aggregate.rule != "mean"
            or self.compression.kind != "none"
            or self.byzantine.active
        )

    @property
    def compresses(self) -> bool:
        return self.compression.kind != "none"

    def check(self, participants: int, dist_mpi: bool = False) -> None:
        """One-line ConfigErrors for settings that cannot work together."""
        self.aggregate.check(participants)
        if self.compression.is_collective:
            if self.aggregate.rule != "mean":
                raise ConfigError(
                    "compress=powersgd sends a low-rank sum that only a mean can decode: "
                    f"use aggregate=mean, not aggregate={self.aggregate.rule}"
                )
            if self.byzantine.active:
                raise ConfigError(
                    "compress=powersgd cannot be combined with byzantine workers (an "
                    "attacker's rows would enter the shared low-rank factors)"
                )
            if dist_mpi:
                raise ConfigError(
                    "compress=powersgd runs two extra rounds per sync in shared memory; "
                    "under dist=mpi those would need gathering: not supported"
                )

    def flips_labels(self, rank: int) -> bool:
        return self.byzantine.on_data and rank in self.byzantine.workers

    def arrays(self, workers: int, size: int) -> dict:
        """The arena arrays the rule and the compressor need."""
        arrays = dict(self.aggregate.arrays(workers, size))
        arrays.update(self.compression.arrays(workers, size, self.matrices))
        return arrays

    @property
    def checkpointed(self) -> tuple[str, ...]:
        return tuple(self.aggregate.checkpointed) + tuple(self.compression.checkpointed)

    def bytes_per_vector(self, size: int) -> int:
        """Bytes one worker sends for the one reduced vector of ``size`` floats."""
        return self.compression.bytes_per_vector(size, self.matrices)

    def record(self) -> dict:
        """metrics.json's account of the reduction."""
        out = {"aggregate": self.aggregate.rule, "compress": self.compression.kind}
        if self.compresses:
            out["compress_error_feedback"] = bool(self.compression.error_feedback)
        byz = self.byzantine
        out["byzantine"] = byz.record(self.workers or None) if byz.active else None
        return out

    def worker(self, view) -> ReductionWorker:
        return ReductionWorker(self, view)


class ReductionWorker:
    """One worker's side of a reduction (built by an exchange's worker)."""

    def __init__(self, reduction: Reduction, view) -> None:
        self.red, self.view, self.rank = reduction, view, view.rank
        arena, comp, byz = view.arena, reduction.compression, reduction.byzantine
        self.residual = None
        if comp.error_feedback and not comp.is_collective and comp.kind != "none":
            self.residual = arena["compress_residuals"][view.rank]
        self.powersgd = None
        if comp.is_collective:
            self.powersgd = PowerSGDWorker(
                comp, reduction.matrices, arena, view.rank, view.lo, view.hi, view.barrier,
                reduction.seed,
            )  # fmt: skip
        self.aggregator = AggregatorWorker(
            reduction.aggregate, arena, view.lo, view.hi, view.barrier
        )
        self.attacks_own = byz.on_own_row and view.rank in byz.workers
        self.z = byz.resolved_z(view.workers) if byz.omniscient else 0.0

    def publish(self, own: np.ndarray, step: int) -> None:
        """Before the rows meet: this worker's row becomes what it sends."""
        red = self.red
        if red.compresses and self.powersgd is None:
            compress_row(red.compression, own, self.residual, red.seed, step)
        if self.attacks_own:
            attack_own_row(red.byzantine, own, self.rank, step)

    def reduce(self, rows: np.ndarray, members: np.ndarray, out: np.ndarray) -> None:
        """After the rows meet (collective): out[lo:hi] = the rule over ``members``."""
        v, byz = self.view, self.red.byzantine
        if byz.omniscient:
            attack_omniscient(byz, rows, members, v.lo, v.hi, self.z)
            v.barrier.wait()  # every attacker row is complete before any rule reads it
        if self.powersgd is not None:
            self.powersgd.reduce(rows, None, out)
        else:
            self.aggregator.reduce(rows, members, out)


def one_shot_reduce(reduction: Reduction, anchor: np.ndarray, step: int):
    """The reduction of final rows in one process (``weight_avg``): attackers act on
    their update theta_i - anchor (the shared start), the rule combines the updates,
    and the result is anchor + aggregate. Returns rows -> combined row."""
    byz = reduction.byzantine

    def reduce(rows: np.ndarray) -> np.ndarray:
        updates = rows.astype(np.float32) - anchor
        members = np.arange(len(updates))
        for rank in byz.workers if byz.on_own_row else ():
            attack_own_row(byz, updates[rank], rank, step)
        if byz.omniscient:
            z = byz.resolved_z(len(rows))
            attack_omniscient(byz, updates, members, 0, updates.shape[1], z)
        return anchor + aggregate_rows(reduction.aggregate, updates)

    return reduce


def with_reduction(combiner: Combiner, reduction: Reduction, workers: int, mpi: bool) -> Combiner:
    """``combiner`` reducing with ``reduction`` (unchanged when it is inactive), or a
    one-line ConfigError where the combination cannot work."""
    if not reduction.active:
        return combiner
    exchange = combiner.exchange
    settings = _settings(reduction)
    if not (exchange.reduces or combiner.averages_at_end):
        raise ConfigError(
            f"{settings} applies to combiners that average (grad_avg, local_sgd, "
            f"weight_avg, the federated family); {combiner.name} does not"
        )
    if reduction.compresses and not exchange.reduces:
        raise ConfigError(
            f"compress={reduction.compression.kind} compresses what workers send during "
            f"training; {combiner.name} sends nothing until the end"
        )
    if getattr(exchange, "weighting", "uniform") != "uniform":
        raise ConfigError(
            f"combiner.weighting={exchange.weighting} weighs a plain mean: it cannot be "
            f"combined with {settings}"
        )
    reduction.check(exchange.participants(workers), dist_mpi=mpi)
    return replace(combiner, exchange=exchange.with_reduction(reduction))


def _settings(reduction: Reduction) -> str:
    """The settings that make ``reduction`` active, for an error message."""
    parts = []
    if reduction.aggregate.rule != "mean":
        parts.append(f"aggregate={reduction.aggregate.rule}")
    if reduction.compresses:
        parts.append(f"compress={reduction.compression.kind}")
    if reduction.byzantine.active:
        parts.append("byzantine.*")
    return " with ".join(parts)


@dataclass(frozen=True)
class _ReducedFinalize:
    """A one-shot combiner's finalize, handed its reduction (picklable)."""

    finalize: object
    reduction: Reduction
    anchor: np.ndarray
    step: int

    def __call__(self, inputs):
        reduce = one_shot_reduce(self.reduction, self.anchor, self.step)
        return self.finalize(replace(inputs, reduce=reduce))


def anchored(combiner: Combiner, anchor: np.ndarray, step: int) -> Combiner:
    """A one-shot averaging combiner whose finalize reduces the final rows with its
    exchange's reduction, updates measured from ``anchor`` (the shared start)."""
    exchange = combiner.exchange
    if not (combiner.averages_at_end and exchange.reducing):
        return combiner
    finalize = _ReducedFinalize(combiner.finalize, exchange.reduction, anchor.copy(), step)
    return replace(combiner, finalize=finalize)
