"""Datasets as float32 feature matrices with int32 labels, and their sharding.

Loaders return a :class:`Dataset`. A loader marked ``in_place`` (synthetic) takes the
run's :class:`~fastdist.engine.rows.RowStore` and writes its rows straight into shared
memory, so the training set exists once; ``dataset=npy`` maps its files (shared through
the page cache); the others return private arrays, which the run copies into the store
once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastdist.data.base import Dataset, check_dataset, standardize
from fastdist.data.files import load_idx_or_npz
from fastdist.data.mnist1d import load_mnist1d
from fastdist.data.npy_files import NpyConfig, load_npy
from fastdist.errors import ConfigError

__all__ = [
    "DATASETS",
    "Dataset",
    "DigitsConfig",
    "FashionMnistConfig",
    "Mnist1dConfig",
    "MnistConfig",
    "NpyConfig",
    "SyntheticConfig",
    "check_dataset_config",
    "clear_dataset_cache",
    "load_dataset",
    "make_synthetic",
    "load_digits",
    "shard_bounds",
    "standardize",
]


def make_synthetic(
    n_samples: int,
    n_features: int,
    n_classes: int,
    seed: int,
    separation: float = 3.0,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded Gaussian-mixture classification problem of any size.

    Each class has a random unit-variance centre at ``separation`` standard deviations
    scale. Rows are drawn straight into ``out`` (a new array if None) in chunks, and the
    centres added in small blocks, so a gigabyte-sized set needs no temporary copy of
    itself; the values do not depend on ``out``.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, n_features)).astype(np.float32)
    centres *= separation / np.sqrt(n_features)
    y = rng.integers(0, n_classes, size=n_samples).astype(np.int32)
    x = np.empty((n_samples, n_features), dtype=np.float32) if out is None else out
    chunk, block = 65536, 4096
    for lo in range(0, n_samples, chunk):
        hi = min(lo + chunk, n_samples)
        # The same draws, at the same stream position, as standard_normal(size=...),
        # written where they belong instead of into a temporary.
        rng.standard_normal(dtype=np.float32, out=x[lo:hi])
        for b in range(lo, hi, block):
            x[b : min(b + block, hi)] += centres[y[b : min(b + block, hi)]]
    return x, y


def _synthetic(cfg, store=None) -> Dataset:
    n_train, n_test = int(cfg.n_train), int(cfg.n_test)
    if n_train < 1 or n_test < 1:
        raise ConfigError(f"dataset sizes must be positive, got n_train={n_train} n_test={n_test}")
    shape = cfg.get("sample_shape")
    shape = None if shape is None else tuple(int(d) for d in shape)
    if shape is not None and int(np.prod(shape)) != int(cfg.n_features):
        raise ConfigError(
            f"dataset.sample_shape {list(shape)} must hold n_features={cfg.n_features}"
        )
    rows = (n_train + n_test, int(cfg.n_features))
    out = None if store is None else store.empty(rows, np.float32)
    x, y = make_synthetic(*rows, int(cfg.n_classes), int(cfg.seed), out=out)
    # The test split is copied out (small): the coordinator evaluates on it after the
    # shared training rows are gone, and a private block can then be freed whole.
    x_test, y_test = x[n_train:].copy(), y[n_train:].copy()
    return Dataset("synthetic", x[:n_train], y[:n_train], x_test, y_test, int(cfg.n_classes), shape)


# Generates into the run's RowStore when given one (see load_dataset).
_synthetic.in_place = True


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits table (1797 x 64 pixels + label) as scikit-learn ships it, read
    straight from its CSV: importing scikit-learn costs about a second, the file 10 ms."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package, imports nothing
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.exists(path):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                table = np.loadtxt(fh, delimiter=",")
            return table[:, :-1], table[:, -1].astype(int)
    from sklearn.datasets import load_digits as sk_digits  # a layout we do not know

    bunch = sk_digits()
    return bunch.data, bunch.target


def load_digits(test_fraction: float = 0.25, split_seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, shipped with the package)."""
    data, target = _digits_arrays()
    x = data.astype(np.float32)
    y = target.astype(np.int32)
    order = np.random.default_rng(split_seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    x_train, x_test = standardize(x[train], x[test])
    return Dataset("digits", x_train, y[train], x_test, y[test], 10, (8, 8))


def _local_files(name: str):
    def load(cfg) -> Dataset:
        return load_idx_or_npz(cfg, name)

    return load


# The settings of each dataset, and their defaults: the schema behind
# conf/dataset/<name>.yaml (a key another dataset has is an error here).


@dataclass
class SyntheticConfig:
    """Seeded Gaussian-mixture classification of any size (benchmarks)."""

    name: str = "synthetic"
    n_train: int = 8192
    n_test: int = 2048
    n_features: int = 32
    n_classes: int = 10
    seed: int = 0
    # Shape of one sample, e.g. [28, 28] for convolutional models; its product must be
    # n_features. null = flat rows.
    sample_shape: list[int] | None = None


@dataclass
class DigitsConfig:
    """scikit-learn's bundled 8x8 digits: 1347 train / 450 test, standardised."""

    name: str = "digits"
    test_fraction: float = 0.25
    split_seed: int = 0


@dataclass
class Mnist1dConfig:
    """MNIST-1D generated offline; seed 42 is the published set; ``path`` caches it."""

    name: str = "mnist1d"
    seed: int = 42
    path: str | None = None


@dataclass
class MnistConfig:
    """MNIST from local IDX files or mnist.npz in ``path``. Nothing is downloaded."""

    name: str = "mnist"
    path: str | None = "data/mnist"


@dataclass
class FashionMnistConfig:
    """Fashion-MNIST from local files, in MNIST's layout. Nothing is downloaded."""

    name: str = "fashion_mnist"
    path: str | None = "data/fashion_mnist"


DATASETS: dict[str, tuple[type, Callable]] = {
    "synthetic": (SyntheticConfig, _synthetic),
    "digits": (
        DigitsConfig,
        lambda cfg: load_digits(float(cfg.test_fraction), int(cfg.split_seed)),
    ),
    "mnist1d": (Mnist1dConfig, load_mnist1d),
    "mnist": (MnistConfig, _local_files("mnist")),
    "fashion_mnist": (FashionMnistConfig, _local_files("fashion_mnist")),
    "npy": (NpyConfig, load_npy),
}


def check_dataset_config(cfg) -> None:
    """The dataset settings' ranges, before anything is loaded."""
    name = str(cfg.name)
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r} (choose from: {', '.join(sorted(DATASETS))})")
    minimum = {"n_train": 1, "n_test": 1, "n_features": 1, "n_classes": 2, "seed": 0}
    minimum["split_seed"] = 0
    for key, low in minimum.items():
        if key in cfg and cfg[key] is not None and int(cfg[key]) < low:
            raise ConfigError(f"dataset.{key} must be >= {low}, got {cfg[key]}")
    for key in ("seed", "split_seed"):  # NumPy's seeds: 32-bit unsigned
        if key in cfg and cfg[key] is not None and int(cfg[key]) >= 2**32:
            raise ConfigError(f"dataset.{key} must be < 2**32, got {cfg[key]}")
    if "test_fraction" in cfg and not 0.0 < float(cfg.test_fraction) < 1.0:
        raise ConfigError(f"dataset.test_fraction must be in (0, 1), got {cfg.test_fraction}")


def load_dataset(cfg, store=None) -> Dataset:
    """Load the dataset a ``dataset`` config node names, and check what came back.

    Kept per process for the next job with the same settings (a sweep's jobs load
    their data set once): callers must not write into the returned arrays (fastdist
    copies or replaces them, never writes). With a shared ``store``, a loader that can
    (synthetic) generates its rows straight into it instead; those are not kept, since
    the store's segments end with the run (the next job generates them again).
    """
    check_dataset_config(cfg)
    key = _cache_key(cfg)
    for i, (cached_key, dataset) in enumerate(_loaded):
        if cached_key == key:
            _loaded.insert(0, _loaded.pop(i))
            return dataset
    loader = DATASETS[str(cfg.name)][1]
    in_place = store is not None and store.shared and getattr(loader, "in_place", False)
    dataset = loader(cfg, store=store) if in_place else loader(cfg)
    path = cfg.get("path") if hasattr(cfg, "get") else getattr(cfg, "path", None)
    source = f"dataset={cfg.name}" + (f" ({path})" if path else "")
    finite = cfg.get("check_finite", True) if hasattr(cfg, "get") else True
    check_dataset(dataset, source, finite=bool(finite))
    if not in_place and _private_bytes(dataset) <= KEEP_BYTES:
        _loaded.insert(0, (key, dataset))
        del _loaded[_KEEP_LOADED:]
    return dataset


# The most recently loaded data sets, newest first, with the settings they came from.
_loaded: list[tuple[tuple, Dataset]] = []
_KEEP_LOADED = 2
# Only small data sets are kept: the cache is for sweeps of small jobs, and a large
# private copy kept alive beside the run's shared one would double the run's memory
# (its loading time is small next to the training such a data set takes).
KEEP_BYTES = 256 << 20


def _private_bytes(dataset: Dataset) -> int:
    """Bytes of the data set in this process's own memory (a file mapping holds none)."""
    arrays = (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
    return sum(a.nbytes for a in arrays if not isinstance(a, np.memmap))


# Settings that name files or directories: a data set rewritten on disk is read again.
_FILE_KEYS = ("path", "x_train", "y_train", "x_test", "y_test")


def _cache_key(cfg) -> tuple:
    """The settings, plus the files they name (their size and mtime), so a data set
    rewritten on disk is read again."""
    items = tuple(sorted((str(k), repr(cfg[k])) for k in cfg))
    files: list = []
    for setting in _FILE_KEYS:
        path = cfg.get(setting, None)
        if path is None or not os.path.exists(str(path)):
            continue
        root = str(path)
        names = sorted(os.listdir(root)) if os.path.isdir(root) else [""]
        stats = [(n, os.stat(os.path.join(root, n) if n else root)) for n in names]
        files += [(setting, n, st.st_size, st.st_mtime_ns) for n, st in stats]
    return items, tuple(files)


def clear_dataset_cache() -> None:
    """Forget the data sets kept by :func:`load_dataset`."""
    _loaded.clear()


def shard_bounds(n_samples: int, n_shards: int) -> list[tuple[int, int]]:
    """N equal contiguous shards; the remainder (< N rows) is dropped, as documented."""
    size = n_samples // n_shards
    return [(k * size, (k + 1) * size) for k in range(n_shards)]
