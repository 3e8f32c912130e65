"""MNIST and Fashion-MNIST read from local files (IDX, raw or gzip, or one .npz).
Nothing here downloads: a missing file is a one-line error that says where to put it,
and a corrupt one is a one-line error that names it. (MNIST-1D: ``data/mnist1d.py``.)"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from fastdist.data.base import Dataset, standardize
from fastdist.data.npz import MissingArrays, read_npz
from fastdist.data.paths import absolute_path
from fastdist.engine.files import regular_file
from fastdist.errors import ConfigError

__all__ = ["load_idx_or_npz", "read_idx"]

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """An IDX file (raw or gzip, told apart by content): unsigned bytes after a
    big-endian magic number (0x00000803 images, 0x00000801 labels) and dimensions."""
    path = regular_file(path)  # before any open: opening a FIFO blocks
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
    """The IDX file ``stem`` (raw or .gz) in ``directory``; something else under its
    name (a FIFO, a directory) is refused rather than passed over as missing."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return regular_file(candidate, "dataset.path: ")
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
    root = absolute_path(path)
    if root.suffix == ".npz":
        if not regular_file(root, "dataset.path: ").is_file():
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
        elif (root / f"{name}.npz").exists():  # read_npz refuses a FIFO or directory
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
