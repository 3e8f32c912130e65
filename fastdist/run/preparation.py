"""Step 1 of the recipe: the data as the workers will see it, and the run's shape.

The training set is shuffled once by the seed; the validation split (for combiners
that select on held-out data) is its head; the shards are equal contiguous slices of
the rest. ``fastdist-combine`` calls the same function to rebuild a saved run's split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fastdist.combiners.base import Combiner
from fastdist.data.base import Dataset
from fastdist.data.datasets import load_dataset, shard_bounds
from fastdist.errors import ConfigError

__all__ = ["PreparedData", "prepare_data", "validation_fraction", "plan_steps", "init_seed"]

log = logging.getLogger("fastdist")

_DEFAULT_VALIDATION = 0.1


@dataclass
class PreparedData:
    """The training set as the workers see it: shuffled once by the seed, minus the
    validation split, cut into equal contiguous shards."""

    dataset: Dataset
    x_train: np.ndarray
    y_train: np.ndarray
    validation: tuple[np.ndarray, np.ndarray] | None
    shards: list[tuple[int, int]]

    def shard_arrays(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        return tuple((self.x_train[lo:hi], self.y_train[lo:hi]) for lo, hi in self.shards)


def validation_fraction(cfg, combiner: Combiner) -> float:
    fraction = float(cfg.validation_fraction)
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0 and combiner.needs_validation:
        log.info(
            "%s selects on held-out data: validation_fraction=%.1f of the training set",
            combiner.name,
            _DEFAULT_VALIDATION,
        )
        fraction = _DEFAULT_VALIDATION
    return fraction


def prepare_data(cfg, workers: int, fraction: float) -> PreparedData:
    dataset = load_dataset(cfg.dataset)
    # Shuffle once, by the seed; the validation split is the head of the shuffled set,
    # shards are contiguous slices of the rest.
    order = np.random.default_rng(int(cfg.seed)).permutation(len(dataset.y_train))
    n_val = int(round(len(order) * fraction))
    if fraction > 0 and n_val == 0:
        raise ConfigError(f"validation_fraction={fraction} leaves no validation rows")
    x, y = dataset.x_train[order], dataset.y_train[order]
    # Copies, not views: a view would keep the whole shuffled block alive after the
    # training rows have moved into shared memory.
    validation = (x[:n_val].copy(), y[:n_val].copy()) if n_val else None
    x, y = x[n_val:], y[n_val:]
    return PreparedData(dataset, x, y, validation, shard_bounds(len(y), workers))


def plan_steps(cfg, n_train: int, workers: int) -> tuple[int, int]:
    """(batch, total steps), once the data are known: a batch must fit in a shard."""
    batch = int(cfg.batch_size)
    shard = n_train // workers
    if batch > shard:
        raise ConfigError(
            f"batch_size={batch} is larger than a shard ({shard} rows = "
            f"{n_train} training rows / {workers} workers)"
        )
    if cfg.steps is not None:
        return batch, int(cfg.steps)
    return batch, int(cfg.epochs) * (shard // batch)


def init_seed(seed: int, worker: int, init: str) -> int:
    """The initialisation seed of a worker: the run's seed when the start is shared;
    otherwise one derived from (seed, worker), so that no two workers of any two seeds
    share an initialisation (seed + worker would: worker 1 of seed 0 = worker 0 of 1)."""
    if init != "independent":
        return seed
    return int(np.random.SeedSequence([seed, worker]).generate_state(1)[0])
