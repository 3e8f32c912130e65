"""Step 1 of the recipe: the data as the workers will see it, and the run's shape.

The training set is shuffled once by the seed; the validation split (for combiners
that select on held-out data) is its head; the ``partition`` record splits the rest
(IID: equal contiguous slices; label or quantity skew: uneven shards, rows reordered so
each shard is contiguous). ``fastdist-combine`` calls the same function to rebuild a
saved run's split.
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
    validation split, cut into contiguous shards (equal under ``partition=iid``)."""

    dataset: Dataset
    x_train: np.ndarray
    y_train: np.ndarray
    shards: list[tuple[int, int]]
    validation: tuple[np.ndarray, np.ndarray] | None = None

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
    return PreparedData(dataset, *_partition(cfg, x, y, workers), validation=validation)


def _partition(cfg, x, y, workers: int):
    """(x, y, shards) with each worker's rows contiguous: ``[lo, hi)`` per worker."""
    from fastdist.data.partitions import IID
    from fastdist.run.records import build_partition

    partition = build_partition(cfg.get("partition"))
    if isinstance(partition, IID):  # no reordering: the historical split, bit for bit
        return x, y, shard_bounds(len(y), workers)
    parts = partition.split(y, workers, int(cfg.seed))
    order = np.concatenate(parts)
    ends = np.cumsum([len(p) for p in parts]).tolist()
    shards = list(zip([0, *ends[:-1]], ends))
    return x[order], y[order], shards


def plan_steps(
    cfg, n_train: int, workers: int, smallest_shard: int | None = None
) -> tuple[int, int]:
    """(batch, total steps), once the data are known: a batch must fit in every shard.

    A step is one batch on every worker. An epoch is ``(n_train // workers) // batch``
    steps: the workers together see as many rows as the training set holds (with equal
    shards, one pass over each shard; with uneven shards, small shards are visited
    more often than large ones, each in its own reshuffled order).
    """
    batch = int(cfg.batch_size)
    shard = n_train // workers
    if batch > shard:
        raise ConfigError(
            f"batch_size={batch} is larger than a shard ({shard} rows = "
            f"{n_train} training rows / {workers} workers)"
        )
    if smallest_shard is not None and batch > smallest_shard:
        raise ConfigError(
            f"batch_size={batch} is larger than the smallest shard ({smallest_shard} rows); "
            "raise partition.min_size or lower batch_size"
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
