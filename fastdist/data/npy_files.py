"""``dataset=npy``: features and labels in ``.npy`` files, trained on where they lie.

The feature files are memory-mapped read-only (``np.load(mmap_mode="r")``), never copied
into shared memory: every worker maps the same region of the same file, so the rows are
shared through the page cache, and a training set larger than RAM trains with the kernel
paging it in and out. Labels are small (4 bytes a row) and are read into memory.

Every file is checked before any worker starts, each failure a one-line
:class:`ConfigError` naming the setting and the file: it exists, is a regular file (a
FIFO would block the open forever) and holds a ``.npy`` array, features are float32
and C-ordered with one row per sample (any trailing shape: ``(n, 28, 28)`` images keep
their sample shape for the CNN), labels are integers with one per feature row. The
checks every dataset gets follow (``check_dataset``): labels in ``[0, n_classes)``,
finite features (read in 64 MB blocks, which also warms the page cache;
``check_finite=false`` skips that pass for files validated before).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from fastdist.data.base import Dataset
from fastdist.data.npz import HEADER_ERRORS, npy_header
from fastdist.data.paths import absolute_path
from fastdist.engine.files import regular_file
from fastdist.errors import ConfigError

__all__ = ["NpyConfig", "declared_shape", "load_npy"]

_KEYS = ("x_train", "y_train", "x_test", "y_test")


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


def _map(path, key: str) -> np.ndarray:
    if not path:
        raise ConfigError(f"dataset=npy needs dataset.{key}=PATH (a .npy file)")
    full = regular_file(absolute_path(path), f"dataset.{key}: ")
    if not full.is_file():
        raise ConfigError(f"dataset.{key}: no such file {full}")
    try:
        return np.load(full, mmap_mode="r", allow_pickle=False)
    except HEADER_ERRORS as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ConfigError(
            f"dataset.{key}: {full} is not a readable .npy array ({detail})"
        ) from None


def declared_shape(cfg, key: str) -> tuple[int, ...] | None:
    """The shape that the header of the file ``dataset.<key>`` declares, read without
    mapping or loading it (for the memory plan, before the loader runs); None when it
    cannot be read or declares more than the file holds: the loader then says what is
    wrong with it."""
    path = cfg.get(key)
    if not path:
        return None
    try:
        # Not a regular file: a ConfigError (a ValueError), so None; the loader says why.
        with open(regular_file(absolute_path(path)), "rb") as fh:
            shape, dtype = npy_header(fh, key)
            data_start, size = fh.tell(), os.fstat(fh.fileno()).st_size
    except HEADER_ERRORS:
        return None
    declared = math.prod(shape) * dtype.itemsize  # Python ints: a forged shape cannot overflow
    fits = min(shape, default=0) >= 0 and declared <= size - data_start
    return tuple(shape) if fits else None


def _features(x: np.ndarray, key: str, path) -> np.ndarray:
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


def _labels(y: np.ndarray, key: str, path, rows: int) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise ConfigError(f"dataset.{key}: {path} holds {y.dtype}, need integer labels")
    if y.shape != (rows,):
        raise ConfigError(f"dataset.{key}: {path} has shape {y.shape}, need ({rows},) labels")
    # The range against n_classes is checked later (check_dataset); a label that int32
    # cannot hold must be refused before the cast would wrap it into range.
    low, high = int(y.min()), int(y.max())
    if low < -(2**31) or high >= 2**31:
        raise ConfigError(f"dataset.{key}: {path} holds labels {low}..{high}, need class numbers")
    return np.array(y, dtype=np.int32)


def load_npy(cfg) -> Dataset:
    """The dataset in ``cfg``'s four files (training features stay a read-only map)."""
    paths = {key: cfg.get(key) for key in _KEYS}
    arrays = {key: _map(paths[key], key) for key in _KEYS}
    x_train = _features(arrays["x_train"], "x_train", paths["x_train"])
    x_test = _features(arrays["x_test"], "x_test", paths["x_test"])
    if arrays["x_test"].shape[1:] != arrays["x_train"].shape[1:]:
        raise ConfigError(
            f"dataset.x_test has samples of shape {arrays['x_test'].shape[1:]}, "
            f"x_train {arrays['x_train'].shape[1:]}"
        )
    y_train = _labels(arrays["y_train"], "y_train", paths["y_train"], len(x_train))
    y_test = _labels(arrays["y_test"], "y_test", paths["y_test"], len(x_test))
    seen = int(max(y_train.max(), y_test.max())) + 1
    n_classes = seen if cfg.get("n_classes") is None else int(cfg.n_classes)
    sample_shape = tuple(int(d) for d in arrays["x_train"].shape[1:])
    return Dataset(
        "npy",
        x_train,
        y_train,
        x_test,
        y_test,
        n_classes,
        sample_shape if len(sample_shape) > 1 else None,
    )
