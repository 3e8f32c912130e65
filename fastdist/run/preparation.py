"""Step 1 of the recipe: the data as the workers will see it, and the run's shape.

The training set is shuffled once by the seed; the validation split (for combiners
that select on held-out data) is its head; the shards are equal contiguous slices of
the rest. ``fastdist-combine`` calls the same function to rebuild a saved run's split.

The shuffle is an index, never a copy of the data: ``rows`` lists the training rows in
shuffled order and workers gather their minibatches through it. With ``shared=True``
the loader writes straight into shared memory (or maps a file) held by a
:class:`~fastdist.engine.rows.RowStore`, so the dataset exists once, however many
workers read it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from fastdist.combiners.base import Combiner
from fastdist.data.base import Dataset
from fastdist.data.datasets import load_dataset, shard_bounds
from fastdist.engine.rows import RowsSpec, RowStore
from fastdist.errors import ConfigError

__all__ = ["PreparedData", "prepare_data", "validation_fraction", "plan_steps", "init_seed"]

log = logging.getLogger("fastdist")

_DEFAULT_VALIDATION = 0.1


@dataclass
class PreparedData:
    """The training set as the workers see it: every loaded row once (``dataset``), the
    shuffled order of the training rows minus the validation split (``rows``), and the
    equal contiguous shards of that order."""

    dataset: Dataset
    rows: np.ndarray
    validation: tuple[np.ndarray, np.ndarray] | None
    shards: list[tuple[int, int]]
    store: RowStore = dataclasses.field(default_factory=lambda: RowStore(shared=False))

    @property
    def n_train(self) -> int:
        return len(self.rows)

    def shard_arrays(self) -> tuple[_Shard, ...]:
        """Each shard as ``(x, y)``, gathered only when a combiner unpacks it."""
        return tuple(_Shard(self, lo, hi) for lo, hi in self.shards)

    def rows_spec(self, part: slice = slice(None)) -> RowsSpec:
        """What a worker opens (shared=True only): features, labels, and ``rows[part]``."""
        ds = self.dataset
        order = self.rows[part]
        return RowsSpec(
            self.store.ref(ds.x_train), self.store.ref(ds.y_train), self.store.ref(order)
        )

    def release(self) -> None:
        """Drop the views and unlink the shared rows (the run is over)."""
        empty = np.empty((0, self.dataset.n_features), np.float32)
        self.dataset = dataclasses.replace(
            self.dataset, x_train=empty, y_train=np.empty(0, np.int32)
        )
        self.rows = np.empty(0, np.int64)
        self.store.close()


class _Shard:
    """``x, y = shard``: one shard's rows, gathered in shuffled order when unpacked."""

    def __init__(self, data: PreparedData, lo: int, hi: int) -> None:
        self._data, self._lo, self._hi = data, lo, hi

    def __len__(self) -> int:
        return 2

    def __iter__(self):
        index = self._data.rows[self._lo : self._hi]
        yield self._data.dataset.x_train[index]
        yield self._data.dataset.y_train[index]

    def __getitem__(self, k: int) -> np.ndarray:
        return tuple(self)[k]


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


def prepare_data(cfg, workers: int, fraction: float, shared: bool = False) -> PreparedData:
    """Load, shuffle (by index) and shard; ``shared=True`` puts the rows in shared memory
    for workers (close ``data.store``, or call ``release()``, when done)."""
    store = RowStore(shared)
    try:
        dataset = load_dataset(cfg.dataset, store)
        # Shuffle once, by the seed; the validation split is the head of the shuffled
        # order, shards are contiguous slices of the rest.
        order = np.random.default_rng(int(cfg.seed)).permutation(len(dataset.y_train))
        n_val = int(round(len(order) * fraction))
        if fraction > 0 and n_val == 0:
            raise ConfigError(f"validation_fraction={fraction} leaves no validation rows")
        head = order[:n_val]
        validation = (dataset.x_train[head], dataset.y_train[head]) if n_val else None
        # A loader that returned private arrays: moved into the store once (a no-op for
        # rows generated in place or memory-mapped).
        x, y = store.share(dataset.x_train), store.share(dataset.y_train)
        dataset = dataclasses.replace(dataset, x_train=x, y_train=y)
        rows = store.empty((len(order) - n_val,), np.int64)
        rows[:] = order[n_val:]
    except BaseException:
        store.close()
        raise
    return PreparedData(dataset, rows, validation, shard_bounds(len(rows), workers), store)


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
