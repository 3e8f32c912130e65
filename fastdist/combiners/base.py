"""The shape every combiner has: an exchange for training, a finalize for the end.

Like an optax ``GradientTransformation``, a combiner is a small frozen record built by a
factory function (the ``_target_`` of ``conf/combiner/<name>.yaml``). Its
:class:`~fastdist.combiners.exchange.Exchange` says what the workers exchange during
training, after which steps, and how (the worker loop, the MPI node coordinator,
accounting and history all read that one object, so they can never disagree on where
the workers meet). ``finalize`` turns the workers' final parameters into the
:class:`CombinedModel` that is evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fastdist.combiners.exchange import Exchange, Sync
from fastdist.errors import ConfigError
from fastdist.models.base import Model

__all__ = [
    "Combiner",
    "CombinedModel",
    "FinalizeInputs",
    "check_init",
    "require_shared",
]


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
    # One-shot averaging under a reduction (aggregate=, byzantine.*): rows -> the
    # combined row (fastdist.combiners.reduction.one_shot_reduce); None: the mean.
    reduce: Callable[[np.ndarray], np.ndarray] | None = None
    # The parameters every worker started from (float32, (P,)): the init_from model,
    # else the shared initialisation; None when the workers started independently.
    # Merges from a common base (task arithmetic, TIES, DARE, Model Stock) read it.
    base: np.ndarray | None = None


@dataclass(frozen=True)
class Combiner:
    name: str
    exchange: Exchange
    finalize: Callable[[FinalizeInputs], CombinedModel]
    init: str = "shared"  # "shared": every worker starts from the same parameters
    needs_validation: bool = False  # finalize uses a held-out split of the training set
    deterministic: bool = True  # False for Hogwild: racing updates depend on timing
    # finalize averages the workers' final rows (one-shot averaging): it takes a
    # reduction (aggregate=, byzantine.*) through FinalizeInputs.reduce.
    averages_at_end: bool = False
    # Raises ConfigError when the model lacks what finalize needs (called before any
    # worker starts).
    check_model: Callable[[Model], None] | None = None
    # Raises ConfigError when finalize cannot merge this many workers (slerp: exactly
    # two), called with the run's total before any worker starts.
    check_workers: Callable[[int], None] | None = None

    @property
    def sync(self) -> Sync:
        return self.exchange.kind

    @property
    def shares_parameters(self) -> bool:
        return self.exchange.shares_parameters

    @property
    def shares_state(self) -> bool:
        return self.exchange.shares_state


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
