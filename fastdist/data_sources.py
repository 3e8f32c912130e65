"""Datasets beyond the built-ins: MNIST-1D generated offline, and MNIST / Fashion-MNIST
read from local files. Nothing here downloads: a missing file is a one-line error that
says where to put it."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fastdist.errors import ConfigError

__all__ = ["load_mnist1d", "load_idx_or_npz", "read_idx"]

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801


def load_mnist1d(cfg):
    """MNIST-1D (Greydanus 2020) from the ``mnist1d`` package's own generator: 4000
    train / 1000 test sequences of 40 features, 10 classes. ``dataset.seed`` is the
    generator's seed (42 reproduces the published set)."""
    from fastdist.data import Dataset, standardize

    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ConfigError(
            "dataset=mnist1d needs the mnist1d package: pip install mnist1d"
        ) from None
    args = get_dataset_args()
    args.seed = int(cfg.seed)
    # make_dataset reseeds NumPy's global generator; keep the caller's state intact.
    state = np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)
    x_train, x_test = standardize(data["x"].astype(np.float32), data["x_test"].astype(np.float32))
    return Dataset(
        "mnist1d", x_train, data["y"].astype(np.int32), x_test, data["y_test"].astype(np.int32), 10
    )


def _open(path: Path):
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """An IDX file (raw or gzip): unsigned bytes with big-endian dimensions."""
    path = Path(path)
    try:
        with _open(path) as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != magic:
        raise ConfigError(f"{path}: not an IDX file of the expected kind (bad magic number)")
    n_dims = raw[3]
    header = 4 + 4 * n_dims
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    if len(raw) - header != int(np.prod(dims)):
        raise ConfigError(f"{path}: truncated or corrupt (size does not match its header)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def load_idx_or_npz(cfg, name: str):
    """MNIST-like data from ``dataset.path``: a directory with the four IDX files (raw
    or .gz) or ``<name>.npz``, or an .npz file (keys x_train, y_train, x_test, y_test)."""
    from fastdist.data import Dataset, standardize

    if cfg.path is None:
        raise ConfigError(f"dataset={name} needs dataset.path: a directory with its files")
    root = Path(str(cfg.path)).expanduser().resolve()
    npz = root if root.suffix == ".npz" else root / f"{name}.npz"
    if npz.is_file():
        with np.load(npz) as data:
            try:
                arrays = {key: data[key] for key in _IDX_FILES}
            except KeyError as exc:
                raise ConfigError(
                    f"{npz}: missing array {exc} (need {', '.join(_IDX_FILES)})"
                ) from None
    else:
        found = {key: _find(root, stem) for key, stem in _IDX_FILES.items()}
        if None in found.values():
            raise ConfigError(
                f"dataset={name} needs its files: put "
                + ", ".join(f"{stem}(.gz)" for stem in _IDX_FILES.values())
                + f" or {name}.npz in {root} (set dataset.path=...)"
            )
        arrays = {
            key: read_idx(path, _IMAGES_MAGIC if key.startswith("x") else _LABELS_MAGIC)
            for key, path in found.items()
        }
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise ConfigError(f"dataset={name}: {len(x)} {split} images but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise ConfigError(f"dataset={name}: {split} labels outside 0..9")
    flat = {
        k: arrays[k].reshape(len(arrays[k]), -1).astype(np.float32) / 255.0
        for k in ("x_train", "x_test")
    }
    x_train, x_test = standardize(flat["x_train"], flat["x_test"])
    return Dataset(
        name,
        x_train,
        arrays["y_train"].astype(np.int32),
        x_test,
        arrays["y_test"].astype(np.int32),
        10,
    )
