"""How the training set is split across workers: IID, label skew, quantity skew.

A partition is a small frozen record built by the factory that
``conf/partition/<name>.yaml`` names in ``_target_`` (``partition=dirichlet
partition.alpha=0.1``). Its :meth:`Partition.split` maps the labels of the (already
shuffled) training set to one index array per worker. It is a pure function of the
labels, the number of workers and the run's seed, so ``fastdist-combine`` and a resumed
run rebuild exactly the same shards. The run then reorders the training rows so each
worker's rows are contiguous: a shard is still a ``[lo, hi)`` slice of the arena,
only the slices may now differ in length.

* ``iid``: equal contiguous slices of the shuffled set (the remainder, < workers rows,
  is dropped) -- fastdist's historical split, bit for bit.
* ``dirichlet``: label skew: for every class, the fractions of its rows that go to each
  worker are drawn from Dirichlet(alpha, ..., alpha) (shard sizes then differ). Small
  alpha: each worker sees few classes; alpha -> infinity: IID. With
  ``equal_sizes=true``, Hsu et al. 2019's own scheme instead: every worker gets the
  same number of rows, its class mix q ~ Dirichlet(alpha * p) with p the training
  set's class frequencies (so alpha there is the total concentration: alpha = 1 with
  10 classes is already strongly skewed), rows drawn from the class pools by q; a class
  whose pool runs out is left out and q renormalised over the rest, so the last workers'
  mixes drift toward what the pools have left.
* ``shards``: pathological label skew (McMahan et al. 2017): rows sorted by label,
  cut into ``workers * classes_per_worker`` equal shards, each worker gets
  ``classes_per_worker`` of them at random.
* ``quantity``: quantity skew (Li et al. 2022, NIID-Bench): IID rows, but shard sizes
  proportional to a Dirichlet(alpha) draw.
* ``replicate``: every worker sees the whole training set (each in its own order): the
  setting of model soups (Wortsman et al. 2022), where N fine-tunes of one base differ
  in their hyperparameters, not their data. The only partition whose shards overlap.

Draws that leave a worker with fewer than ``min_size`` rows are redrawn (from the same
seeded stream, so still reproducible).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from fastdist.errors import ConfigError

__all__ = [
    "Partition",
    "IID",
    "Dirichlet",
    "LabelShards",
    "QuantitySkew",
    "iid",
    "dirichlet",
    "shards",
    "quantity",
    "replicate",
    "Replicate",
    "label_histograms",
]

_STREAM = 0x5A27  # keeps the partition's random stream apart from every other use of seed
_MAX_DRAWS = 1000


class Partition(abc.ABC):
    """The record of one way to split the training rows across workers."""

    name: str = "partition"
    # True: every worker's shard is the whole training set (split is not called).
    replicates: bool = False

    @abc.abstractmethod
    def split(self, y: np.ndarray, workers: int, seed: int) -> list[np.ndarray]:
        """One ascending int64 index array per worker into ``y``; disjoint."""

    def _rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng([int(seed), _STREAM])


@dataclass(frozen=True)
class IID(Partition):
    name = "iid"

    def split(self, y, workers, seed):
        size = len(y) // workers
        return [np.arange(k * size, (k + 1) * size) for k in range(workers)]


@dataclass(frozen=True)
class Replicate(Partition):
    name = "replicate"
    replicates = True

    def split(self, y, workers, seed):
        return [np.arange(len(y)) for _ in range(workers)]


def _min_size(min_size: int) -> int:
    if not isinstance(min_size, int) or min_size < 1:
        raise ConfigError(f"partition.min_size must be a positive integer, got {min_size!r}")
    return min_size


def _alpha(alpha: float) -> float:
    if not alpha > 0:
        raise ConfigError(f"partition.alpha must be > 0, got {alpha}")
    return float(alpha)


def _redraw(draw, workers: int, min_size: int, what: str) -> list[np.ndarray]:
    """Call ``draw()`` until every worker has at least ``min_size`` rows."""
    for _ in range(_MAX_DRAWS):
        parts = draw()
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(p).astype(np.int64) for p in parts]
    raise ConfigError(
        f"{what}: no draw in {_MAX_DRAWS} gave every one of {workers} workers "
        f"{min_size} rows; lower partition.min_size or raise partition.alpha"
    )


@dataclass(frozen=True)
class Dirichlet(Partition):
    alpha: float = 0.5
    min_size: int = 32
    equal_sizes: bool = False

    name = "dirichlet"

    def split(self, y, workers, seed):
        rng = self._rng(seed)
        if self.equal_sizes:
            return self._equal_sized(y, workers, rng)
        classes = [np.flatnonzero(y == c) for c in np.unique(y)]

        def draw():
            parts: list[list[np.ndarray]] = [[] for _ in range(workers)]
            for rows in classes:
                p = rng.dirichlet(np.full(workers, self.alpha))
                cuts = (np.cumsum(p)[:-1] * len(rows)).astype(np.int64)
                for k, chunk in enumerate(np.split(rng.permutation(rows), cuts)):
                    parts[k].append(chunk)
            return [np.concatenate(p) for p in parts]

        return _redraw(draw, workers, self.min_size, f"partition=dirichlet alpha={self.alpha}")

    def _equal_sized(self, y, workers: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Hsu et al. 2019: ``len(y) // workers`` rows each (the remainder, < workers
        rows, is dropped, as ``iid`` does), worker k's class mix q_k ~ Dirichlet(alpha *
        p), rows taken from per-class pools in a seeded order."""
        size = len(y) // workers
        if size < self.min_size:
            raise ConfigError(
                f"partition=dirichlet equal_sizes: {len(y)} rows give {workers} workers "
                f"{size} each, fewer than partition.min_size={self.min_size}"
            )
        pools = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
        left = np.array([len(pool) for pool in pools], dtype=np.int64)
        prior = left / left.sum()
        parts = []
        for _ in range(workers):
            # Very small concentrations can underflow to an all-zero (nan) draw.
            q = np.nan_to_num(rng.dirichlet(self.alpha * prior))
            counts = np.zeros_like(left)
            while (need := size - int(counts.sum())) > 0:
                room = left - counts
                weights = np.where(room > 0, q, 0.0)
                if not weights.sum() > 0:  # q's classes are used up: any class left
                    weights = (room > 0).astype(np.float64)
                counts += np.minimum(rng.multinomial(need, weights / weights.sum()), room)
            start = [len(pool) - n for pool, n in zip(pools, left)]
            parts.append(
                np.concatenate([pool[s : s + n] for pool, s, n in zip(pools, start, counts)])
            )
            left -= counts
        return [np.sort(part).astype(np.int64) for part in parts]


@dataclass(frozen=True)
class LabelShards(Partition):
    classes_per_worker: int = 2

    name = "shards"

    def split(self, y, workers, seed):
        rng = self._rng(seed)
        n_shards = workers * self.classes_per_worker
        if n_shards > len(y):
            raise ConfigError(f"partition=shards: {n_shards} shards of {len(y)} rows")
        by_label = np.argsort(y, kind="stable")
        size = len(y) // n_shards
        pieces = [by_label[i * size : (i + 1) * size] for i in range(n_shards)]
        owner = rng.permutation(n_shards)
        k = self.classes_per_worker
        return [
            np.sort(np.concatenate([pieces[s] for s in owner[w * k : (w + 1) * k]])).astype(
                np.int64
            )
            for w in range(workers)
        ]


@dataclass(frozen=True)
class QuantitySkew(Partition):
    alpha: float = 0.5
    min_size: int = 32

    name = "quantity"

    def split(self, y, workers, seed):
        rng = self._rng(seed)

        def draw():
            p = rng.dirichlet(np.full(workers, self.alpha))
            cuts = (np.cumsum(p)[:-1] * len(y)).astype(np.int64)
            return np.split(rng.permutation(len(y)), cuts)

        return _redraw(draw, workers, self.min_size, f"partition=quantity alpha={self.alpha}")


def iid() -> IID:
    """``partition=iid``: equal contiguous slices of the shuffled training set."""
    return IID()


def dirichlet(alpha: float = 0.5, min_size: int = 32, equal_sizes: bool = False) -> Dirichlet:
    """``partition=dirichlet``: per-class Dirichlet(alpha) label skew; ``equal_sizes``:
    Hsu et al. 2019's equal-sized workers with class mixes ~ Dirichlet(alpha * p)."""
    if not isinstance(equal_sizes, bool):
        raise ConfigError(f"partition.equal_sizes must be true or false, got {equal_sizes!r}")
    return Dirichlet(_alpha(alpha), _min_size(min_size), equal_sizes)


def shards(classes_per_worker: int = 2) -> LabelShards:
    """``partition=shards``: each worker holds ``classes_per_worker`` label-sorted shards."""
    if not isinstance(classes_per_worker, int) or classes_per_worker < 1:
        raise ConfigError(
            f"partition.classes_per_worker must be a positive integer, got {classes_per_worker!r}"
        )
    return LabelShards(classes_per_worker)


def quantity(alpha: float = 0.5, min_size: int = 32) -> QuantitySkew:
    """``partition=quantity``: IID rows, shard sizes ~ Dirichlet(alpha)."""
    return QuantitySkew(_alpha(alpha), _min_size(min_size))


def replicate() -> Replicate:
    """``partition=replicate``: every worker trains on the whole training set."""
    return Replicate()


def label_histograms(y: np.ndarray, bounds, n_classes: int) -> list[list[int]]:
    """Rows of each class in each ``[lo, hi)`` shard of ``y`` (for metrics.json)."""
    return [np.bincount(y[lo:hi], minlength=n_classes).tolist() for lo, hi in bounds]
