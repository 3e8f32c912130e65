"""Step 1 of the recipe: the data as the workers will see it, and the run's shape.

The training set is shuffled once by the seed; the validation split (for combiners
that select on held-out data) is its head; the ``partition`` record splits the rest
(IID: equal contiguous slices; label or quantity skew: uneven shards, rows reordered so
each shard is contiguous). ``fastdist-combine`` calls the same function to rebuild a
saved run's split.

The shuffle (and a partition's reordering) is an index, never a copy of the data:
``rows`` lists the training rows in the order the workers see them, and workers gather
their minibatches through it. With ``shared=True`` the loader writes straight into
shared memory (or maps a file) held by a :class:`~fastdist.engine.rows.RowStore`, so
the dataset exists once, however many workers read it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np

from fastdist.combiners.base import Combiner
from fastdist.data.base import Dataset
from fastdist.data.datasets import load_dataset, shard_bounds
from fastdist.engine.rows import RowsSpec, RowStore, segment_bytes
from fastdist.errors import ConfigError

__all__ = [
    "PreparedData",
    "ShardRows",
    "prepare_data",
    "validation_fraction",
    "plan_steps",
    "epoch_steps",
    "init_seed",
    "shared_data_bytes",
    "validation_rows",
]

log = logging.getLogger("fastdist")

_DEFAULT_VALIDATION = 0.1


@dataclass
class PreparedData:
    """The training set as the workers see it: every loaded row once (``dataset``), the
    order of the training rows (shuffled once by the seed, minus the validation split,
    grouped by shard: ``rows``), and each shard's ``[lo, hi)`` slice of that order
    (equal under ``partition=iid``). A context manager: leaving it unlinks the shared
    rows (``release``)."""

    dataset: Dataset
    rows: np.ndarray
    shards: list[tuple[int, int]]
    validation: tuple[np.ndarray, np.ndarray] | None = None
    store: RowStore = field(default_factory=lambda: RowStore(shared=False))

    @property
    def n_train(self) -> int:
        return len(self.rows)

    @property
    def y_train(self) -> np.ndarray:
        """The training labels in ``rows`` order (a small gathered copy)."""
        return self.dataset.y_train[self.rows]

    def shard_arrays(self) -> tuple[tuple[ShardRows, ShardRows], ...]:
        """Each shard as ``(x, y)``, read through the index: nothing is gathered until
        a combiner reads rows (Fisher reads a few hundred)."""
        ds = self.dataset
        return tuple(
            (ShardRows(ds.x_train, self.rows[lo:hi]), ShardRows(ds.y_train, self.rows[lo:hi]))
            for lo, hi in self.shards
        )

    def training_arrays(self) -> tuple[ShardRows, ShardRows]:
        """Every training row (all shards, never the validation split) as ``(x, y)``,
        read through the index like :meth:`shard_arrays`."""
        ds = self.dataset
        return ShardRows(ds.x_train, self.rows), ShardRows(ds.y_train, self.rows)

    def rows_spec(self, part: slice = slice(None)) -> RowsSpec:
        """What a worker opens (``shared=True`` only): features, labels, and the rows
        of ``part`` (a node's share under dist=mpi)."""
        ds, store = self.dataset, self.store
        return RowsSpec(store.ref(ds.x_train), store.ref(ds.y_train), store.ref(self.rows[part]))

    def release(self) -> None:
        """Drop the views and unlink the shared rows (the run is over)."""
        empty = np.empty((0, self.dataset.n_features), np.float32)
        self.dataset = dataclasses.replace(
            self.dataset, x_train=empty, y_train=np.empty(0, np.int32)
        )
        self.rows = np.empty(0, np.int64)
        self.store.close()

    def __enter__(self) -> PreparedData:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class ShardRows:
    """Rows ``base[index]``, gathered only when read: ``len``, ``shape``, ``dtype``,
    indexing (``x[idx]``: the rows at those positions of the shard) and
    ``np.asarray(x)`` (the whole shard) work as on the gathered array."""

    def __init__(self, base: np.ndarray, index: np.ndarray) -> None:
        self._base, self._index = base, index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._index), *self._base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._base.dtype

    @property
    def ndim(self) -> int:
        return self._base.ndim

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self._base[self._index[key[0]]][(slice(None), *key[1:])]
        return self._base[self._index[key]]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        gathered = self._base[self._index]
        return gathered if dtype is None else gathered.astype(dtype, copy=False)


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


def prepare_data(
    cfg, workers: int, fraction: float, shared: bool = False, trusted: bool = True
) -> PreparedData:
    """Load, shuffle (by index) and shard. ``shared=True`` puts the rows where workers
    can open them (leave the returned object's ``with`` block, or call ``release()``,
    when done); ``shared=False`` keeps everything private (fastdist-combine).
    ``trusted=False``: ``cfg`` came from a run directory (its records are built by the
    untrusted builder, :mod:`fastdist.run.records`)."""
    store = RowStore(shared)
    try:
        dataset = load_dataset(cfg.dataset, store)
        # Shuffle once, by the seed; the validation split is the head of the shuffled
        # order, shards are contiguous slices of the rest.
        order = np.random.default_rng(int(cfg.seed)).permutation(len(dataset.y_train))
        n_val = validation_rows(len(order), fraction)
        if fraction > 0 and n_val == 0:
            raise ConfigError(f"validation_fraction={fraction} leaves no validation rows")
        head = order[:n_val]
        validation = (dataset.x_train[head], dataset.y_train[head]) if n_val else None
        # A loader that returned private arrays: copied into the store once (a no-op
        # for rows generated in place or memory-mapped from a file).
        x, y = store.share(dataset.x_train), store.share(dataset.y_train)
        dataset = dataclasses.replace(dataset, x_train=x, y_train=y)
        order, shards = _partition(cfg, order[n_val:], y, workers, trusted)
        rows = store.empty(order.shape, np.int64)
        rows[:] = order
    except BaseException:
        store.close()
        raise
    return PreparedData(dataset, rows, shards, validation, store)


def validation_rows(n_train: int, fraction: float) -> int:
    """How many of the shuffled training rows the validation split takes (its head)."""
    return int(round(n_train * fraction))


def shared_data_bytes(n_train: int, fraction: float, x_segment: int = 0) -> int:
    """The bytes :func:`prepare_data` puts in /dev/shm for ``n_train`` training rows:
    the features' segment (``x_segment``: 0 for a file's map, which is page cache), the
    shared copy of the training labels (int32; every loader returns them private) and
    the row order (int64, the rows the validation split leaves; a partition other
    than IID may drop a few more, so for those this is an upper bound)."""
    n_rows = n_train - validation_rows(n_train, fraction)
    return x_segment + segment_bytes((n_train,), np.int32) + segment_bytes((n_rows,), np.int64)


def _partition(cfg, order: np.ndarray, y: np.ndarray, workers: int, trusted: bool):
    """(order, shards): the training rows grouped so each worker's are contiguous,
    ``[lo, hi)`` of ``order`` per worker."""
    from fastdist.data.partitions import IID
    from fastdist.run.records import build_partition

    partition = build_partition(cfg.get("partition"), trusted)
    if partition.replicates:  # overlapping shards: each worker reads every row
        return order, [(0, len(order))] * workers
    if isinstance(partition, IID):  # no reordering: the historical split, bit for bit
        return order, shard_bounds(len(order), workers)
    parts = partition.split(y[order], workers, int(cfg.seed))
    ends = np.cumsum([len(p) for p in parts]).tolist()
    shards = list(zip([0, *ends[:-1]], ends))
    return order[np.concatenate(parts)], shards


def plan_steps(
    cfg, n_train: int, workers: int, smallest_shard: int | None = None
) -> tuple[int, int]:
    """(batch, total steps), once the data are known: a batch must fit in every shard.

    A step is one batch on every worker. An epoch is ``(n_train // workers) // batch``
    steps: the workers together see as many rows as the training set holds (with equal
    shards, one pass over each shard; with uneven shards, small shards are visited
    more often than large ones, each in its own reshuffled order). Under
    ``partition=replicate`` (every shard is the whole set) an epoch is one pass over
    the whole set by every worker: ``n_train // batch`` steps.
    """
    batch = int(cfg.batch_size)
    shard = n_train // workers
    if smallest_shard is not None and smallest_shard == n_train:  # partition=replicate
        shard = n_train  # an epoch is one pass over the whole set by every worker
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


def epoch_steps(n_train: int, workers: int, batch: int, smallest_shard: int) -> int:
    """The steps of one epoch as :func:`plan_steps` counts them: the same on every node
    of a ``dist=mpi`` job (it depends on the whole training set, not a node's shards)."""
    shard = n_train if smallest_shard == n_train else n_train // workers
    return max(shard // batch, 1)


def init_seed(seed: int, worker: int, init: str) -> int:
    """The initialisation seed of a worker: the run's seed when the start is shared;
    otherwise one derived from (seed, worker), so that no two workers of any two seeds
    share an initialisation (seed + worker would: worker 1 of seed 0 = worker 0 of 1)."""
    if init != "independent":
        return seed
    return int(np.random.SeedSequence([seed, worker]).generate_state(1)[0])
