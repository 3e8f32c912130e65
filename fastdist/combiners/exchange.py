"""What a combiner exchanges during training: one protocol, owned by the combiner.

A combiner record carries an :class:`Exchange` (the way a Flower ``Strategy`` owns
configure/aggregate, but on shared memory). The exchange says

- which arena arrays it needs besides the parameters, optimizer state and gradients
  (:meth:`Exchange.arrays`) and which of them a checkpoint keeps (``checkpointed``);
- after which steps the workers communicate (:meth:`Exchange.sync_at`): the ONE
  definition read by the worker loop, the MPI node coordinator, accounting and history;
- which per-worker arrays a worker publishes at a sync (:meth:`Exchange.published`):
  rows indexed by global rank, which the node coordinators gather across machines under
  ``dist=mpi``, so every worker then reduces the same rows in the same order as on one
  machine (results are bitwise equal);
- how many vectors of the parameters' size a taking-part worker would send per sync
  (:meth:`Exchange.vectors_per_sync`, :meth:`Exchange.participants`): the one count
  behind metrics.json's ``comm_*`` keys and history.csv's ``bytes_synchronised``;
- and, in each worker, what happens after its gradient (:meth:`WorkerExchange.local_step`)
  and at a sync point (:meth:`WorkerExchange.sync`), on the :class:`ExchangeView` the
  worker loop hands it. Reductions are done slice by slice: the worker of rank k reduces
  columns ``[view.lo, view.hi)`` of every published row, in row order.

The worker loop's step then reads: compute the gradient; ``local_step``; if
``sync_at``: ``sync``. Gradient averaging, local SGD, Hogwild, independent training and
the federated family (:mod:`fastdist.combiners.rounds`) are all written against it, and
so is a combiner of your own (docs/design.md, "How to add a combiner").
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fastdist.engine.allreduce import average_rows
from fastdist.optim.base import Optimizer

__all__ = [
    "Exchange",
    "ExchangeView",
    "WorkerExchange",
    "Sync",
    "communication_bytes",
    "gradient_mean",
    "lock_free",
    "no_exchange",
    "periodic_average",
]


class Sync(enum.Enum):
    """What workers exchange during training (a label for metrics and checks)."""

    GRADIENTS = "gradients"  # every step: average gradients, one shared parameter vector
    PARAMETERS = "parameters"  # at scheduled steps: average parameter vectors
    NONE = "none"  # independent training; combination happens only in finalize
    ASYNC = "async"  # lock-free updates of one shared parameter vector (Hogwild)


@dataclass
class ExchangeView:
    """What one worker's side of an exchange works on (built by the worker loop).

    Per-worker arena arrays (``param_rows``, every state vector's rows, ``grads`` and an
    exchange's own) have one row per *global* worker; ``rank`` is this worker's row.
    ``meet()`` is the sync's first meeting: every worker has written what it publishes
    and (under ``dist=mpi``) the node coordinator has gathered the other machines' rows;
    ``barrier`` is the workers' own barrier (this machine's).
    """

    arena: Any
    rank: int
    workers: int
    lo: int
    hi: int
    optimizer: Optimizer
    params: np.ndarray
    state: list[np.ndarray]
    grad: np.ndarray
    param_rows: np.ndarray
    state_rows: np.ndarray
    grads: np.ndarray
    meet: Callable[[], None]
    barrier: Any
    clip: Any = None  # fastdist.optim.clipping.GlobalNormClip, or None
    seed: int = 0
    total_steps: int = 0
    shard_sizes: tuple[int, ...] = ()

    def grad_scale(self) -> float:
        """Clipping of this worker's own gradient (1 without clipping)."""
        return 1.0 if self.clip is None else self.clip.scale_for_own(self.grad)

    def own_update(self, step: int, lr: float) -> None:
        """The optimizer's step on this worker's own parameters, with its own gradient."""
        self.optimizer.update(
            self.params,
            self.state,
            self.grad,
            0,
            self.params.shape[0],
            step,
            lr=lr,
            grad_scale=self.grad_scale(),
        )


class WorkerExchange:
    """One worker's side of an exchange. The default: train on its own parameters."""

    def __init__(self, view: ExchangeView) -> None:
        self.view = view

    def trains(self, step: int) -> bool:
        """Whether this worker computes a gradient at ``step`` (partial participation)."""
        return True

    def local_step(self, step: int, lr: float) -> None:
        """After this worker's gradient at ``step`` (only if it trains)."""
        self.view.own_update(step, lr)

    def sync(self, step: int, lr: float) -> None:
        """At a sync point (every worker calls it, training or not). A sync of an
        exchange that ``meets`` calls ``view.meet()`` exactly once, first: under
        dist=mpi the node coordinator waits there for every sync ``sync_at`` names."""


@dataclass(frozen=True)
class Exchange:
    """What is exchanged during training, and when. Picklable: workers receive it.

    The base class exchanges nothing: each worker trains its own parameter row.
    """

    kind: Sync = Sync.NONE
    shares_parameters: bool = False  # all workers read and write one parameter row
    shares_state: bool = False  # ... and one optimizer-state row
    meets: bool = True  # a sync is a meeting of every worker (Hogwild's is not)
    checkpointed: tuple[str, ...] = ()  # arena arrays a checkpoint keeps, beyond the rest
    # Compression, attackers and the aggregation rule applied to the reduced rows
    # (fastdist.combiners.reduction.Reduction; None: the plain mean). Only exchanges
    # that average (``reduces``) take one; set it with :meth:`with_reduction`.
    reduction: Any = None
    reduces: bool = False  # averages rows at a sync: takes a reduction

    def with_reduction(self, reduction) -> Exchange:
        """This exchange reducing with ``reduction`` (its arrays and checkpointed state
        added); the exchange itself unchanged when ``reduction`` is inactive."""
        if reduction is None or not reduction.active:
            return self
        kept = reduction.checkpointed
        if self.kind is not Sync.GRADIENTS and "anchor" not in self.checkpointed:
            kept = ("anchor", *kept)
        return replace(self, reduction=reduction, checkpointed=self.checkpointed + kept)

    @property
    def reducing(self) -> bool:
        """Whether a sync goes through a reduction (else the exchange's own mean)."""
        return self.reduction is not None and self.reduction.active

    def sync_at(self, step: int, total_steps: int) -> bool:
        """Whether the workers communicate after (0-based) step ``step``."""
        return False

    def syncs_between(self, start: int, stop: int, total_steps: int) -> int:
        """How many sync points the steps ``[start, stop)`` contain."""
        return sum(1 for step in range(start, stop) if self.sync_at(step, total_steps))

    def arrays(self, workers: int, size: int, n_state: int) -> dict:
        """Name -> (shape, dtype) of the arena arrays this exchange needs (an exchange
        with arrays of its own adds :meth:`reduction_arrays`)."""
        return self.reduction_arrays(workers, size)

    def reduction_arrays(self, workers: int, size: int) -> dict:
        """The reduction's arrays, plus ``anchor`` (where the current period started)
        and ``reduced`` (the reduction's result) for the exchanges that need them."""
        if not self.reducing:
            return {}
        arrays = {"reduced": ((size,), np.float32)}
        if self.kind is not Sync.GRADIENTS:  # updates are measured from the anchor
            arrays["anchor"] = ((size,), np.float32)
        arrays.update(self.reduction.arrays(workers, size))
        return arrays

    def init_arena(self, arena) -> None:
        """Fill this exchange's arrays once the parameters are initialised."""
        if "anchor" in arena:
            arena["anchor"][:] = arena["params"][0]  # every update is measured from here

    def published(self, arena) -> list[np.ndarray]:
        """The per-worker arrays (rows by global rank) every worker writes before a
        sync; gathered across machines under dist=mpi."""
        return []

    def vectors_per_sync(self, n_state: int) -> int:
        """Vectors of the parameters' size a taking-part worker sends per sync."""
        return 0

    def participants(self, workers: int) -> int:
        """Workers taking part in a sync."""
        return workers

    def evaluated_row(self, arena, own: np.ndarray) -> np.ndarray:
        """What a worker's snapshot copies at an evaluation step: its own parameter row
        (``own``), unless the exchange keeps a model of its own (a round's server
        model: mid-round the workers' rows are local models, not the run's model)."""
        return own

    def worker(self, view: ExchangeView) -> WorkerExchange:
        return WorkerExchange(view)


def communication_bytes(exchange: Exchange, size: int, n_state: int) -> int:
    """Bytes one taking-part worker would send over a network per sync (float32
    vectors of ``size`` parameters; ``n_state`` optimizer-state vectors). Under a
    compressing reduction the one reduced vector (gradient, update) costs what the
    compressor sends; the others (optimizer state, control variates) stay float32."""
    payload = exchange.vectors_per_sync(n_state) * 4 * size
    if exchange.reducing and payload:
        payload += exchange.reduction.bytes_per_vector(size) - 4 * size
    return payload


def no_exchange() -> Exchange:
    """Independent training; the combiner acts in ``finalize`` only."""
    return Exchange()


# ---------------------------------------------------------------- gradient averaging


class _GradientMeanWorker(WorkerExchange):
    def __init__(self, view: ExchangeView, reduction) -> None:
        super().__init__(view)
        self.reduction = None if reduction is None else reduction.worker(view)
        if self.reduction is not None:
            self.members = np.arange(view.workers)
            self.reduced = view.arena["reduced"]

    def local_step(self, step: int, lr: float) -> None:
        pass  # the update happens at the sync, from the mean

    def sync(self, step: int, lr: float) -> None:
        if self.reduction is not None:
            self._reduced_sync(step, lr)
            return
        # Sync point 1: every gradient row is written. Worker k then averages slice k
        # of all rows and updates slice k of the shared parameters (reduce-scatter
        # fused with a sharded optimizer step). Clipping first meets the others once
        # more to add up the norm of the mean.
        v = self.view
        v.meet()
        scale = 1.0 if v.clip is None else v.clip.scale_for_mean(v.grads, v.lo, v.hi)
        v.optimizer.update_from_mean(
            v.params, v.state, v.grads, v.lo, v.hi, step, lr=lr, grad_scale=scale
        )
        # Sync point 2: the whole parameter vector is updated before anyone starts the
        # next forward pass.
        v.barrier.wait()

    def _reduced_sync(self, step: int, lr: float) -> None:
        # The same two sync points, with the rule's own in between: the worker's
        # gradient becomes what it sends, the rule writes slice k of the result, and
        # worker k updates slice k of the parameters from it (no fused mean here: a
        # robust rule is not a sum).
        v = self.view
        self.reduction.publish(v.grad, step)
        v.meet()
        self.reduction.reduce(v.grads, self.members, self.reduced)
        scale = 1.0 if v.clip is None else v.clip.scale_for_slices(self.reduced, v.lo, v.hi)
        v.optimizer.update(
            v.params, v.state, self.reduced, v.lo, v.hi, step, lr=lr, grad_scale=scale
        )
        v.barrier.wait()


@dataclass(frozen=True)
class _GradientMean(Exchange):
    kind: Sync = Sync.GRADIENTS
    shares_parameters: bool = True
    shares_state: bool = True
    reduces: bool = True

    def sync_at(self, step: int, total_steps: int) -> bool:
        return True

    def published(self, arena) -> list[np.ndarray]:
        return [arena["grads"]]

    def vectors_per_sync(self, n_state: int) -> int:
        return 1

    def worker(self, view: ExchangeView) -> WorkerExchange:
        return _GradientMeanWorker(view, self.reduction if self.reducing else None)


def gradient_mean() -> Exchange:
    """Every step, the mean of the workers' gradients updates one shared vector."""
    return _GradientMean()


# ---------------------------------------------------------------- periodic averaging


class _PeriodicAverageWorker(WorkerExchange):
    def __init__(self, view: ExchangeView, average_state: bool, reduction) -> None:
        super().__init__(view)
        self.averaged: Sequence[np.ndarray] = [view.param_rows]
        if average_state:
            self.averaged = [view.param_rows, *view.state_rows]
        self.reduction = None if reduction is None else reduction.worker(view)
        if self.reduction is not None:
            self.members = np.arange(view.workers)
            self.anchor, self.reduced = view.arena["anchor"], view.arena["reduced"]

    def sync(self, step: int, lr: float) -> None:
        v = self.view
        if self.reduction is not None:
            self._reduced_sync(step)
            return
        v.meet()  # all rows hold their local step's result
        for rows in self.averaged:
            average_rows(rows, v.lo, v.hi)
        v.barrier.wait()  # every row holds the average

    def _reduced_sync(self, step: int) -> None:
        # What a worker sends is its update since the last sync, theta_i - anchor (what
        # compressors and attackers act on); the new parameters are anchor + the rule
        # over the updates. Optimizer state, if averaged, takes the plain mean.
        v = self.view
        np.subtract(v.params, self.anchor, out=v.params)
        self.reduction.publish(v.params, step)
        v.meet()
        self.reduction.reduce(v.param_rows, self.members, self.reduced)
        lo, hi = v.lo, v.hi
        self.anchor[lo:hi] += self.reduced[lo:hi]
        v.param_rows[:, lo:hi] = self.anchor[lo:hi]
        for rows in self.averaged[1:]:
            average_rows(rows, lo, hi)
        v.barrier.wait()  # every row holds the new parameters


@dataclass(frozen=True)
class _PeriodicAverage(Exchange):
    kind: Sync = Sync.PARAMETERS
    period: int = 1
    average_state: bool = False
    reduces: bool = True

    def sync_at(self, step: int, total_steps: int) -> bool:
        # Under a reduction the run also ends on a sync, so the final model is the
        # rule's (with attackers), not finalize's plain mean of the last local steps.
        end = self.reducing and step == total_steps - 1
        return (step + 1) % self.period == 0 or end

    def published(self, arena) -> list[np.ndarray]:
        rows = [arena["params"]]
        return rows + list(arena["opt_state"]) if self.average_state else rows

    def vectors_per_sync(self, n_state: int) -> int:
        return 1 + (n_state if self.average_state else 0)

    def worker(self, view: ExchangeView) -> WorkerExchange:
        reduction = self.reduction if self.reducing else None
        return _PeriodicAverageWorker(view, self.average_state, reduction)


def periodic_average(period: int, average_state: bool = False) -> Exchange:
    """After every ``period`` local steps, every row is replaced by the rows' mean
    (parameters, and every optimizer-state vector with ``average_state``)."""
    return _PeriodicAverage(period=period, average_state=average_state)


# ---------------------------------------------------------------- Hogwild


@dataclass(frozen=True)
class _LockFree(Exchange):
    kind: Sync = Sync.ASYNC
    shares_parameters: bool = True
    meets: bool = False  # the write into the shared vector is the exchange

    def sync_at(self, step: int, total_steps: int) -> bool:
        return True  # every step's update reaches the others (no barrier)

    def vectors_per_sync(self, n_state: int) -> int:
        return 1


def lock_free() -> Exchange:
    """Every worker writes its update into one shared vector, without a lock."""
    return _LockFree()
