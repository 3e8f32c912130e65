"""MNIST-1D (Greydanus 2020) generated offline by the ``mnist1d`` package's own
generator, and its optional cache: an untrusted file like any other, checked before use
and regenerated when it does not fit."""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
from pathlib import Path

import numpy as np

from fastdist.data.base import Dataset, standardize
from fastdist.data.npz import NpzError, read_npz
from fastdist.data.paths import absolute_path
from fastdist.engine.files import regular_file
from fastdist.errors import ConfigError

__all__ = ["load_mnist1d", "no_cache_writes"]

_SPLITS = ("x_train", "y_train", "x_test", "y_test")
_MNIST1D_SPLIT = (4000, 1000, 40)  # train rows, test rows, features of the standard set


def _generate_mnist1d(seed: int) -> dict[str, np.ndarray]:
    """The package's own generator (never its ``get_dataset``, which may download)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ModuleNotFoundError as exc:
        if (exc.name or "mnist1d").split(".")[0] == "mnist1d":
            raise ConfigError(
                "dataset=mnist1d needs the mnist1d package: pip install 'fastdist[mnist1d]'"
            ) from None
        raise ConfigError(
            f"dataset=mnist1d: the mnist1d package cannot be imported ({exc})"
        ) from None
    except ImportError as exc:
        raise ConfigError(
            f"dataset=mnist1d: the mnist1d package cannot be imported ({exc})"
        ) from None
    args = get_dataset_args()
    args.seed = int(seed)
    # make_dataset reseeds NumPy's and Python's global generators: keep the caller's.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x_train": np.asarray(data["x"], dtype=np.float32),
        "y_train": np.asarray(data["y"], dtype=np.int32),
        "x_test": np.asarray(data["x_test"], dtype=np.float32),
        "y_test": np.asarray(data["y_test"], dtype=np.int32),
    }


def _mnist1d_cache_file(path, seed: int) -> Path:
    root = absolute_path(path)
    return root if root.suffix == ".npz" else root / f"mnist1d_seed{seed}.npz"


def _read_mnist1d_cache(file: Path, seed: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is absent, unreadable or for another seed.
    Something other than a file under its name (a FIFO, a directory) is an error, not a
    cache to regenerate: that would replace it."""
    regular_file(file, "dataset.path: ")
    try:
        cached = read_npz(file, ("seed", *_SPLITS))
        # A seed of inf: OverflowError, of several values: TypeError (found by the fuzz).
        if int(cached["seed"]) != seed:
            return None
    except (NpzError, ValueError, TypeError, OverflowError):  # regenerate
        return None
    arrays = {key: cached[key] for key in _SPLITS}
    n_train, n_test, n_features = _MNIST1D_SPLIT
    if arrays["x_train"].shape != (n_train, n_features) or arrays["x_test"].shape != (
        n_test,
        n_features,
    ):
        return None
    _check_mnist1d_cache(file, arrays)
    return arrays


def _check_mnist1d_cache(file: Path, arrays: dict[str, np.ndarray]) -> None:
    """A cache is a file like any other: its right shape says nothing of its contents.
    Checked here on the raw arrays (before the float32/int32 conversion could hide a
    label of 2**32 + 3 as 3); the rest is :func:`check_dataset`'s."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        problem = None
        if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu" or y.ndim != 1:
            problem = f"{split} arrays have dtypes {x.dtype}/{y.dtype} and label shape {y.shape}"
        elif y.size and (int(y.min()) < 0 or int(y.max()) >= 10):
            problem = f"{split} labels outside 0..9 ({int(y.min())}..{int(y.max())})"
        elif len(y) != len(x):
            problem = f"{len(x)} {split} rows but {len(y)} labels"
        elif not np.isfinite(x).all():
            problem = f"{split} features contain NaN or infinite values"
        if problem:
            raise ConfigError(
                f"dataset=mnist1d: the cache {file} is damaged ({problem}); delete it and "
                "the next run regenerates it"
            )


_CACHE_WRITES = contextvars.ContextVar("fastdist_cache_writes", default=True)


@contextlib.contextmanager
def no_cache_writes():
    """Load without writing any cache (``fastdist-combine``: the paths come from an
    untrusted run directory, and it writes nothing outside that directory)."""
    token = _CACHE_WRITES.set(False)
    try:
        yield
    finally:
        _CACHE_WRITES.reset(token)


def _write_mnist1d_cache(file: Path, seed: int, arrays: dict[str, np.ndarray]) -> None:
    """Best effort and atomic (concurrent sweep jobs may race): a cache that cannot be
    written only costs the next run a regeneration. The temporary file goes on every
    path, Ctrl-C included."""
    if not _CACHE_WRITES.get():
        return
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp.npz")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, seed=np.int64(seed), **arrays)
        os.replace(tmp, file)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(exc, OSError):
            raise


def load_mnist1d(cfg):
    """MNIST-1D (Greydanus 2020) from the ``mnist1d`` package's own generator, offline:
    4000 train / 1000 test sequences of 40 features, 10 classes, standardised with the
    training statistics. ``dataset.seed`` is the generator's seed (the package default,
    42, reproduces the published set). With ``dataset.path`` set, the generated arrays
    are cached there (``mnist1d_seed<seed>.npz``, or the .npz file the path names)."""
    seed = int(cfg.seed)
    path = getattr(cfg, "path", None)
    cache = _mnist1d_cache_file(path, seed) if path else None
    arrays = _read_mnist1d_cache(cache, seed) if cache is not None else None
    if arrays is None:
        arrays = _generate_mnist1d(seed)
        if cache is not None:
            _write_mnist1d_cache(cache, seed, arrays)
    x_train, x_test = standardize(arrays["x_train"], arrays["x_test"])
    return Dataset(
        "mnist1d",
        x_train,
        arrays["y_train"].astype(np.int32),
        x_test,
        arrays["y_test"].astype(np.int32),
        10,
        (_MNIST1D_SPLIT[2],),
    )
