"""The shape every combiner has: a sync schedule for training, a finalize for the end.

Like an optax ``GradientTransformation``, a combiner is a small frozen record built by a
factory function (the ``_target_`` of ``conf/combiner/<name>.yaml``). Its
:class:`SyncSchedule` says what the workers exchange during training and after which
steps; the worker loop and the MPI node coordinator both read that one pure function,
so they can never wait at different barriers. ``finalize`` turns the workers' final
parameters into the :class:`CombinedModel` that is evaluated.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastdist.errors import ConfigError
from fastdist.models.base import Model

__all__ = [
    "Sync",
    "SyncSchedule",
    "Combiner",
    "CombinedModel",
    "FinalizeInputs",
    "check_init",
    "require_shared",
]


class Sync(enum.Enum):
    """What workers exchange during training."""

    GRADIENTS = "gradients"  # every step: average gradients, one shared parameter vector
    PARAMETERS = "parameters"  # at scheduled steps: average parameter vectors
    NONE = "none"  # independent training; combination happens only in finalize
    ASYNC = "async"  # lock-free updates of one shared parameter vector (Hogwild)


@dataclass(frozen=True)
class SyncSchedule:
    """What is exchanged during training, and when. Picklable: workers receive it."""

    exchange: Sync = Sync.NONE
    period: int | None = None  # Sync.PARAMETERS: average after every ``period`` steps
    average_state: bool = False  # Sync.PARAMETERS: average the optimizer state too
    # Local-update rounds with an outer optimizer (fastdist.combiners.federated.RoundPlan);
    # None for plain parameter averaging.
    rounds: Any = None

    def sync_at(self, step: int) -> bool:
        """Whether the workers meet after (0-based) step ``step``."""
        if self.exchange is Sync.GRADIENTS:
            return True
        if self.exchange is Sync.PARAMETERS and self.period:
            return (step + 1) % self.period == 0
        return False

    def syncs_between(self, start: int, stop: int) -> int:
        """How many sync points the steps ``[start, stop)`` contain."""
        return sum(1 for step in range(start, stop) if self.sync_at(step))

    @property
    def shares_parameters(self) -> bool:
        """True when all workers read and write one parameter vector in the arena."""
        return self.exchange in (Sync.GRADIENTS, Sync.ASYNC)

    @property
    def shares_state(self) -> bool:
        """Under gradient averaging the optimizer state is sharded, hence shared too."""
        return self.exchange is Sync.GRADIENTS


@dataclass(frozen=True)
class CombinedModel:
    """The predictor a combiner produces: members whose outputs are averaged with
    ``weights`` (softmax probabilities, or logits when ``average == "logits"``). A
    single member is an ordinary model. ``info`` carries what the combiner wants
    reported in metrics.json (e.g. which workers a greedy soup kept)."""

    members: tuple[np.ndarray, ...]
    weights: tuple[float, ...] = ()
    average: str = "probs"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a combined model needs at least one member")
        if not self.weights:
            n = len(self.members)
            object.__setattr__(self, "weights", tuple([1.0 / n] * n))


@dataclass(frozen=True)
class FinalizeInputs:
    """What the coordinator hands to ``finalize`` once training has ended."""

    worker_params: np.ndarray  # (rows, P): one row per worker, or one shared row
    model: Model
    samples_seen: np.ndarray  # (workers,) training samples each worker processed
    # Each worker's training shard (x, y), for data-dependent combiners (Fisher). The
    # run passes row views (run.preparation.ShardRows) that gather only the rows read:
    # len(), .shape, .dtype, x[index_array] and np.asarray(x) (the whole shard) work as
    # on arrays; other array methods need np.asarray first.
    shards: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    # A validation split carved from the training data (never the test set), for
    # combiners that select or weight members by held-out accuracy (greedy soup).
    validation: tuple[np.ndarray, np.ndarray] | None = None
    seed: int = 0


@dataclass(frozen=True)
class Combiner:
    name: str
    schedule: SyncSchedule
    finalize: Callable[[FinalizeInputs], CombinedModel]
    init: str = "shared"  # "shared": every worker starts from the same parameters
    needs_validation: bool = False  # finalize uses a held-out split of the training set
    deterministic: bool = True  # False for Hogwild: racing updates depend on timing
    # Raises ConfigError when the model lacks what finalize needs (called before any
    # worker starts).
    check_model: Callable[[Model], None] | None = None

    @property
    def sync(self) -> Sync:
        return self.schedule.exchange

    @property
    def shares_parameters(self) -> bool:
        return self.schedule.shares_parameters

    @property
    def shares_state(self) -> bool:
        return self.schedule.shares_state


def check_init(init: str) -> str:
    """Validate the ``combiner.init`` option shared by several combiners."""
    if init not in ("shared", "independent"):
        raise ConfigError(f"combiner.init must be 'shared' or 'independent', got {init!r}")
    return init


def require_shared(init: str, name: str) -> str:
    """For combiners that keep ONE parameter vector: only a shared start makes sense.
    (They still take the option, so one sweep can set ``combiner.init`` for all.)"""
    if check_init(init) != "shared":
        raise ConfigError(
            f"{name} trains one shared parameter vector: combiner.init must be shared"
        )
    return init
