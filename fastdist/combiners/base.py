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

__all__ = ["Sync", "Combiner", "CombinedModel", "FinalizeInputs"]


class Sync(enum.Enum):
    """What workers exchange during training."""

    GRADIENTS = "gradients"  # every step: average gradients, one shared parameter vector
    PARAMETERS = "parameters"  # every ``period`` steps: average parameter vectors
    NONE = "none"  # independent training; combination happens only in finalize


@dataclass(frozen=True)
class CombinedModel:
    """The predictor a combiner produces: members whose softmax outputs are averaged
    with ``weights``. A single member is an ordinary model."""

    members: tuple[np.ndarray, ...]
    weights: tuple[float, ...] = ()

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
    options: dict = field(default_factory=dict)

    @property
    def shares_parameters(self) -> bool:
        """True when all workers read and write one parameter vector in the arena."""
        return self.sync is Sync.GRADIENTS
