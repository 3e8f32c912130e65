"""The shape every combiner has: a sync schedule for training, a finalize for the end.

Like an optax ``GradientTransformation``, a combiner is a small frozen record built by a
factory function (the ``_target_`` of ``conf/combiner/*.yaml``). The worker loop reads
its schedule; the coordinator calls ``finalize`` on the workers' final parameters.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fastdist.model import ParamLayout

__all__ = [
    "Sync",
    "Combiner",
    "CombinedModel",
    "FinalizeInputs",
    "check_init",
    "require_shared",
]


class Sync(enum.Enum):
    """What workers exchange during training."""

    GRADIENTS = "gradients"  # every step: average gradients, one shared parameter vector
    PARAMETERS = "parameters"  # every ``period`` steps: average parameter vectors
    NONE = "none"  # independent training; combination happens only in finalize
    ASYNC = "async"  # lock-free updates of one shared parameter vector (Hogwild)


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
    layout: ParamLayout
    samples_seen: np.ndarray  # (workers,) training samples each worker processed
    # Each worker's training shard (x, y), for data-dependent combiners (Fisher).
    shards: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    # A validation split carved from the training data (never the test set), for
    # combiners that select or weight members by held-out accuracy (greedy soup).
    validation: tuple[np.ndarray, np.ndarray] | None = None
    seed: int = 0


@dataclass(frozen=True)
class Combiner:
    name: str
    sync: Sync
    finalize: Callable[[FinalizeInputs], CombinedModel]
    period: int | None = None  # steps between parameter averages (Sync.PARAMETERS)
    init: str = "shared"  # "shared": every worker starts from the same parameters
    needs_validation: bool = False  # finalize uses a held-out split of the training set
    deterministic: bool = True  # False for Hogwild: racing updates depend on timing
    options: dict = field(default_factory=dict)

    @property
    def shares_parameters(self) -> bool:
        """True when all workers read and write one parameter vector in the arena."""
        return self.sync in (Sync.GRADIENTS, Sync.ASYNC)

    @property
    def shares_momentum(self) -> bool:
        """Under gradient averaging the optimizer state is sharded, hence shared too."""
        return self.sync is Sync.GRADIENTS


def check_init(init: str) -> str:
    """Validate the ``combiner.init`` option shared by several combiners."""
    from fastdist.errors import ConfigError

    if init not in ("shared", "independent"):
        raise ConfigError(f"combiner.init must be 'shared' or 'independent', got {init!r}")
    return init


def require_shared(init: str, name: str) -> str:
    """For combiners that keep ONE parameter vector: only a shared start makes sense.
    (They still take the option, so one sweep can set ``combiner.init`` for all.)"""
    from fastdist.errors import ConfigError

    if check_init(init) != "shared":
        raise ConfigError(
            f"{name} trains one shared parameter vector: combiner.init must be shared"
        )
    return init
