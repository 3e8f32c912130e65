"""Datasets as float32 feature matrices with int32 labels, and their sharding.

Loaders return a :class:`Dataset` held in the coordinator's memory only long enough to
copy it once into the shared arena; workers then read their shard as a view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastdist.errors import ConfigError

__all__ = [
    "Dataset",
    "load_dataset",
    "make_synthetic",
    "load_digits",
    "shard_bounds",
    "standardize",
]


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


def make_synthetic(
    n_samples: int, n_features: int, n_classes: int, seed: int, separation: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded Gaussian-mixture classification problem of any size.

    Each class has a random unit-variance centre at ``separation`` standard deviations
    scale; rows are generated in chunks so gigabyte-sized sets do not need a float64 copy.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, n_features)).astype(np.float32)
    centres *= separation / np.sqrt(n_features)
    y = rng.integers(0, n_classes, size=n_samples).astype(np.int32)
    x = np.empty((n_samples, n_features), dtype=np.float32)
    chunk = 65536
    for lo in range(0, n_samples, chunk):
        hi = min(lo + chunk, n_samples)
        x[lo:hi] = rng.standard_normal((hi - lo, n_features), dtype=np.float32)
        x[lo:hi] += centres[y[lo:hi]]
    return x, y


def standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero mean, unit variance per feature, with statistics from the training split only."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return (
        ((x_train - mean) / std).astype(np.float32),
        ((x_test - mean) / std).astype(np.float32),
    )


def _synthetic(cfg) -> Dataset:
    n_train, n_test = int(cfg.n_train), int(cfg.n_test)
    if n_train < 1 or n_test < 1:
        raise ConfigError(f"dataset sizes must be positive, got n_train={n_train} n_test={n_test}")
    x, y = make_synthetic(n_train + n_test, int(cfg.n_features), int(cfg.n_classes), int(cfg.seed))
    # The test split is copied out so that the big generated block can be freed once the
    # training rows have moved into shared memory.
    x_test, y_test = x[n_train:].copy(), y[n_train:].copy()
    return Dataset("synthetic", x[:n_train], y[:n_train], x_test, y_test, int(cfg.n_classes))


def load_digits(test_fraction: float = 0.25, split_seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, shipped with the package)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int32)
    order = np.random.default_rng(split_seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    x_train, x_test = standardize(x[train], x[test])
    return Dataset("digits", x_train, y[train], x_test, y[test], 10)


def _mnist1d(cfg) -> Dataset:
    from fastdist.data_sources import load_mnist1d

    return load_mnist1d(cfg)


def _local_files(name: str):
    def load(cfg) -> Dataset:
        from fastdist.data_sources import load_idx_or_npz

        return load_idx_or_npz(cfg, name)

    return load


_LOADERS = {
    "synthetic": _synthetic,
    "digits": lambda cfg: load_digits(float(cfg.test_fraction), int(cfg.split_seed)),
    "mnist1d": _mnist1d,
    "mnist": _local_files("mnist"),
    "fashion_mnist": _local_files("fashion_mnist"),
}


def load_dataset(cfg) -> Dataset:
    """Load the dataset a ``dataset`` config node names."""
    name = str(cfg.name)
    if name not in _LOADERS:
        raise ConfigError(f"unknown dataset {name!r} (choose from: {', '.join(sorted(_LOADERS))})")
    return _LOADERS[name](cfg)


def shard_bounds(n_samples: int, n_shards: int) -> list[tuple[int, int]]:
    """N equal contiguous shards; the remainder (< N rows) is dropped, as documented."""
    size = n_samples // n_shards
    return [(k * size, (k + 1) * size) for k in range(n_shards)]
