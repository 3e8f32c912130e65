"""Every loaded array is checked before any worker starts, caches included: a label a
kernel would index out of bounds with, NaN, disagreeing lengths, empty splits."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

import fastdist
from fastdist.data.base import Dataset, check_dataset
from fastdist.data.datasets import load_dataset
from fastdist.errors import ConfigError


def _mnist1d_cache(path, **changes):
    rng = np.random.default_rng(0)
    arrays = {
        "seed": np.int64(42),
        "x_train": rng.standard_normal((4000, 40)).astype(np.float32),
        "y_train": rng.integers(0, 10, 4000).astype(np.int64),
        "x_test": rng.standard_normal((1000, 40)).astype(np.float32),
        "y_test": rng.integers(0, 10, 1000).astype(np.int64),
    }
    for key, edit in changes.items():
        arrays[key] = edit(arrays[key].copy())
    np.savez(path, **arrays)
    return path


def _set(index, value):
    def edit(a):
        a[index] = value
        return a

    return edit


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"y_train": _set(3, 99)}, "labels outside 0..9"),
        ({"y_train": _set(3, -1)}, "labels outside 0..9"),
        ({"y_test": _set(0, 10**9)}, "labels outside 0..9"),
        ({"y_train": lambda a: a.astype(np.int64) + 2**32}, "labels outside 0..9"),
        ({"y_train": lambda a: a[:100]}, "4000 train rows but 100 labels"),
        ({"y_train": lambda a: a.astype(np.float64) + 0.5}, "dtypes"),
        ({"x_test": _set((5, 3), np.nan)}, "test features contain NaN"),
        ({"x_train": _set((5, 3), np.inf)}, "train features contain NaN"),
    ],
)
def test_a_tampered_mnist1d_cache_is_refused_in_one_line(tmp_path, changes, message):
    path = _mnist1d_cache(tmp_path / "c.npz", **changes)
    cfg = OmegaConf.create({"name": "mnist1d", "seed": 42, "path": str(path)})
    with pytest.raises(ConfigError, match=message):
        load_dataset(cfg)


def test_a_good_cache_still_loads(tmp_path):
    path = _mnist1d_cache(tmp_path / "c.npz")
    data = load_dataset(OmegaConf.create({"name": "mnist1d", "seed": 42, "path": str(path)}))
    assert data.x_train.shape == (4000, 40)


def _mnist_npz(path, **changes):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (64, 28, 28)).astype(np.uint8),
        "y_train": rng.integers(0, 10, 64).astype(np.uint8),
        "x_test": rng.integers(0, 256, (16, 28, 28)).astype(np.uint8),
        "y_test": rng.integers(0, 10, 16).astype(np.uint8),
    }
    arrays.update(changes)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"x_test": np.zeros((0, 28, 28), np.uint8), "y_test": np.zeros(0, np.uint8)}, "empty"),
        ({"x_train": np.zeros((64, 0), np.uint8), "x_test": np.zeros((16, 0), np.uint8)}, "no"),
    ],
)
def test_empty_splits_and_zero_features_are_refused_before_training(tmp_path, changes, message):
    path = _mnist_npz(tmp_path / "m.npz", **changes)
    with pytest.raises(ConfigError, match=message):
        fastdist.train(fastdist.compose(["dataset=mnist", f"dataset.path={path}", "steps=1"]))


def _dataset(**changes):
    fields = {
        "name": "t",
        "x_train": np.zeros((8, 3), np.float32),
        "y_train": np.zeros(8, np.int32),
        "x_test": np.zeros((4, 3), np.float32),
        "y_test": np.zeros(4, np.int32),
        "n_classes": 2,
    }
    fields.update(changes)
    return Dataset(**fields)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"y_train": np.zeros(7, np.int32)}, "8 train rows but 7 train labels"),
        ({"x_test": np.zeros((4, 2), np.float32)}, "3 features but test rows 2"),
        ({"x_train": np.zeros((8, 3), np.float64)}, "float32"),
        ({"y_test": np.full(4, 2, np.int32)}, r"in \[0, 2\), found 2..2"),
        ({"y_train": np.zeros(8, np.float32)}, "integers"),
        ({"n_classes": 1}, "at least 2 classes"),
    ],
)
def test_check_dataset_names_what_is_wrong(changes, message):
    check_dataset(_dataset(), "src")
    with pytest.raises(ConfigError, match=f"src: .*{message}"):
        check_dataset(_dataset(**changes), "src")
