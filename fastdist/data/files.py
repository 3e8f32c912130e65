"""Datasets beyond the built-ins: MNIST-1D generated offline, and MNIST / Fashion-MNIST
read from local files. Nothing here downloads: a missing file is a one-line error that
says where to put it, and a corrupt one is a one-line error that names it."""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import os
import random
import zlib
from pathlib import Path

import numpy as np

from fastdist.data.base import Dataset, standardize
from fastdist.data.npz import MissingArrays, NpzError, read_npz
from fastdist.errors import ConfigError

__all__ = ["load_mnist1d", "load_idx_or_npz", "no_cache_writes", "read_idx"]

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_MNIST1D_SPLIT = (4000, 1000, 40)  # train rows, test rows, features of the standard set


def _absolute(path) -> Path:
    """``path`` made absolute against the directory fastdist was started in (Hydra's
    original working directory when a Hydra job changed it, else the current one)."""
    try:
        from hydra.utils import to_absolute_path

        path = to_absolute_path(str(path))
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    return Path(os.path.expanduser(str(path))).absolute()


# --------------------------------------------------------------------------- MNIST-1D


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
    root = _absolute(path)
    return root if root.suffix == ".npz" else root / f"mnist1d_seed{seed}.npz"


def _read_mnist1d_cache(file: Path, seed: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is absent, unreadable or for another seed."""
    try:
        cached = read_npz(file, ("seed", *_IDX_FILES))
        # A seed of inf: OverflowError, of several values: TypeError (found by the fuzz).
        if int(cached["seed"]) != seed:
            return None
    except (NpzError, ValueError, TypeError, OverflowError):  # regenerate
        return None
    arrays = {key: cached[key] for key in _IDX_FILES}
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


# ------------------------------------------------------------ MNIST and Fashion-MNIST


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """An IDX file (raw or gzip, told apart by content): unsigned bytes after a
    big-endian magic number (0x00000803 images, 0x00000801 labels) and dimensions."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{path}: cannot read ({detail})") from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        raise ConfigError(
            f"{path}: not an IDX file of the expected kind (bad magic number, "
            f"expected 0x{magic:08x})"
        )
    n_dims = raw[3]
    header = 4 + 4 * n_dims
    if len(raw) < header:
        raise ConfigError(f"{path}: truncated or corrupt (header cut short)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    if len(raw) - header != int(np.prod(dims, dtype=np.int64)):
        raise ConfigError(
            f"{path}: truncated or corrupt ({len(raw) - header} data bytes, "
            f"header says {'x'.join(map(str, dims))})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing(name: str, where: str) -> ConfigError:
    return ConfigError(
        f"dataset={name} needs its files: put "
        + ", ".join(f"{stem}(.gz)" for stem in _IDX_FILES.values())
        + f" or {name}.npz in {where} (set dataset.path=...)"
    )


def _read_npz(npz: Path) -> dict[str, np.ndarray]:
    try:
        return read_npz(npz, _IDX_FILES)
    except MissingArrays as exc:
        raise ConfigError(
            f"{npz}: missing array(s) {', '.join(exc.missing)} (need {', '.join(_IDX_FILES)})"
        ) from None


def _validate(name: str, arrays: dict[str, np.ndarray]) -> None:
    n_features = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim not in (2, 3) or y.ndim != 1:
            raise ConfigError(
                f"dataset={name}: {split} images must be (n, 28, 28) and labels (n,), "
                f"got {x.shape} and {y.shape}"
            )
        if len(x) != len(y):
            raise ConfigError(f"dataset={name}: {len(x)} {split} images but {len(y)} labels")
        if len(y) == 0:
            raise ConfigError(f"dataset={name}: the {split} split is empty")
        if x.dtype.kind not in "ui" or y.dtype.kind not in "ui":
            raise ConfigError(
                f"dataset={name}: {split} images and labels must be integers "
                f"(uint8 pixels 0..255), got {x.dtype} and {y.dtype}"
            )
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ConfigError(f"dataset={name}: {split} pixels outside 0..255")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ConfigError(f"dataset={name}: {split} labels outside 0..9")
        n_features[split] = int(np.prod(x.shape[1:]))
    if n_features["train"] != n_features["test"]:
        raise ConfigError(
            f"dataset={name}: train images have {n_features['train']} pixels but test "
            f"images {n_features['test']}"
        )


def load_idx_or_npz(cfg, name: str):
    """MNIST-like data from ``dataset.path``: a directory holding the four IDX files
    (each raw or .gz) or ``<name>.npz``, or an .npz file itself (Keras layout: keys
    x_train, y_train, x_test, y_test; uint8 images (n, 28, 28)). Images are flattened,
    scaled to [0, 1] and standardised with the training statistics (float32); labels
    are int32. A relative path is taken from the directory fastdist was started in."""
    path = getattr(cfg, "path", None)
    if path is None or not str(path).strip():
        raise _missing(name, "a directory")
    root = _absolute(path)
    if root.suffix == ".npz":
        if not root.is_file():
            raise ConfigError(
                f"dataset={name} needs its files: no such file {root} (set dataset.path=... "
                f"to a directory holding the four IDX files or to an .npz file)"
            )
        arrays = _read_npz(root)
    else:
        found = {key: _find(root, stem) for key, stem in _IDX_FILES.items()}
        if None not in found.values():
            arrays = {
                key: read_idx(file, _IMAGES_MAGIC if key.startswith("x") else _LABELS_MAGIC)
                for key, file in found.items()
            }
        elif (root / f"{name}.npz").is_file():
            arrays = _read_npz(root / f"{name}.npz")
        else:
            raise _missing(name, str(root))
    _validate(name, arrays)
    flat = {
        key: arrays[key]
        .reshape(len(arrays[key]), int(np.prod(arrays[key].shape[1:])))
        .astype(np.float32)
        / np.float32(255.0)
        for key in ("x_train", "x_test")
    }
    x_train, x_test = standardize(flat["x_train"], flat["x_test"])
    return Dataset(
        name,
        x_train,
        arrays["y_train"].astype(np.int32),
        x_test,
        arrays["y_test"].astype(np.int32),
        10,
        tuple(int(d) for d in arrays["x_train"].shape[1:]),
    )
