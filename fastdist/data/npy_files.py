"""``dataset=npy``: features and labels in ``.npy`` files, trained on where they lie.

The feature files are memory-mapped read-only (``np.load(mmap_mode="r")``), never copied
into shared memory: every worker maps the same file, so the rows are shared through
the page cache and a dataset larger than RAM trains with the kernel paging it in and
out. Labels are small (4 bytes a row) and are read into memory.

Every file is checked before training, each failure a one-line :class:`ConfigError`
naming the file: it exists and is a ``.npy`` array, features are float32 and
C-ordered with one row per sample, labels are integers with one per feature row and
lie in ``[0, n_classes)``, and features are finite (checked in blocks, which also
warms the page cache; ``check_finite=false`` skips that pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastdist.data.base import Dataset
from fastdist.data.files import _absolute
from fastdist.errors import ConfigError

__all__ = ["NpyConfig", "load_npy"]

_BLOCK_BYTES = 64 << 20  # finiteness check: 64 MB of rows at a time


@dataclass
class NpyConfig:
    """Features (float32, one row per sample) and integer labels in .npy files,
    memory-mapped read-only: the training set may be larger than memory."""

    name: str = "npy"
    x_train: str | None = None
    y_train: str | None = None
    x_test: str | None = None
    y_test: str | None = None
    n_classes: int | None = None  # default: the largest label + 1
    check_finite: bool = True


def _map(path: str, key: str, store) -> np.ndarray:
    if not path:
        raise ConfigError(f"dataset=npy needs dataset.{key}=PATH (a .npy file)")
    full = _absolute(path)
    if not full.is_file():
        raise ConfigError(f"dataset.{key}: no such file {full}")
    try:
        if store is not None and key == "x_train":
            return store.map_npy(str(full))
        return np.load(full, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ConfigError(f"dataset.{key}: {full} is not a readable .npy array ({exc})") from None


def _features(x: np.ndarray, key: str, path: str) -> np.ndarray:
    if x.dtype != np.float32:
        raise ConfigError(
            f"dataset.{key}: {path} holds {x.dtype}, need float32 "
            "(save it with np.save(path, x.astype(np.float32)))"
        )
    if x.ndim < 2 or x.shape[0] == 0 or 0 in x.shape[1:]:
        raise ConfigError(f"dataset.{key}: {path} has shape {x.shape}, need (rows, features...)")
    if not x.flags.c_contiguous:
        raise ConfigError(f"dataset.{key}: {path} is Fortran-ordered; save it C-ordered")
    return x.reshape(x.shape[0], -1)  # a view: the map stays a map


def _labels(y: np.ndarray, key: str, path: str, rows: int) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise ConfigError(f"dataset.{key}: {path} holds {y.dtype}, need integer labels")
    if y.shape != (rows,):
        raise ConfigError(f"dataset.{key}: {path} has shape {y.shape}, need ({rows},) labels")
    return np.asarray(y, dtype=np.int64)


def _check_finite(x: np.ndarray, key: str, path: str) -> None:
    step = max(1, _BLOCK_BYTES // max(1, x.strides[0]))
    for lo in range(0, x.shape[0], step):
        block = x[lo : lo + step]
        if not np.isfinite(block).all():
            bad = lo + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise ConfigError(f"dataset.{key}: {path} has a non-finite value in row {bad}")


def load_npy(cfg, store=None) -> Dataset:
    """The dataset in ``cfg``'s four files; training features mapped through ``store``."""
    paths = {key: cfg.get(key) for key in ("x_train", "y_train", "x_test", "y_test")}
    arrays = {key: _map(paths[key], key, store) for key in paths}
    x_train = _features(arrays["x_train"], "x_train", paths["x_train"])
    x_test = _features(arrays["x_test"], "x_test", paths["x_test"])
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ConfigError(
            f"dataset.x_test has samples of shape {arrays['x_test'].shape[1:]}, "
            f"x_train {arrays['x_train'].shape[1:]}"
        )
    y_train = _labels(arrays["y_train"], "y_train", paths["y_train"], len(x_train))
    y_test = _labels(arrays["y_test"], "y_test", paths["y_test"], len(x_test))
    seen = int(max(y_train.max(), y_test.max())) + 1
    n_classes = seen if cfg.get("n_classes") is None else int(cfg.n_classes)
    if n_classes < 2:
        raise ConfigError(f"dataset=npy needs at least 2 classes, got {n_classes}")
    for key, y in (("y_train", y_train), ("y_test", y_test)):
        if y.min() < 0 or y.max() >= n_classes:
            raise ConfigError(
                f"dataset.{key}: labels must be in [0, {n_classes}), found "
                f"{int(y.min())}..{int(y.max())}"
            )
    if bool(cfg.get("check_finite", True)):
        for key, x in (("x_train", x_train), ("x_test", x_test)):
            _check_finite(x, key, paths[key])
    sample_shape = tuple(int(d) for d in arrays["x_train"].shape[1:])
    return Dataset(
        "npy",
        x_train,
        y_train.astype(np.int32),
        np.asarray(x_test),
        y_test.astype(np.int32),
        n_classes,
        sample_shape if len(sample_shape) > 1 else None,
    )


load_npy.in_place = True
