"""The in-memory form of a dataset: float32 feature rows and int32 labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "check_dataset", "standardize"]


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    # The shape of one sample before it was flattened into a row (images: (28, 28));
    # models that care about structure (convolutions) read it, the arena stores rows.
    sample_shape: tuple[int, ...] | None = None

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.sample_shape or (self.n_features,)


def standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero mean, unit variance per feature, with statistics from the training split only."""
    # Non-finite input is refused afterwards (check_dataset) in one line, not warned about.
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0
        return (
            ((x_train - mean) / std).astype(np.float32),
            ((x_test - mean) / std).astype(np.float32),
        )


def _first_non_finite(x: np.ndarray) -> int | None:
    """The first row of ``x`` holding NaN or an infinity, or None. Checked in blocks of
    about 64 MB, so a memory-mapped file larger than RAM is read once, never held."""
    step = max(1, (64 << 20) // max(1, x.strides[0]))
    for lo in range(0, x.shape[0], step):
        block = np.isfinite(x[lo : lo + step]).all(axis=1)
        if not block.all():
            return lo + int(np.flatnonzero(~block)[0])
    return None


def check_dataset(data: Dataset, source: str, finite: bool = True) -> None:
    """Refuse (ConfigError, one line naming ``source``) arrays that training cannot use
    safely: shapes that disagree, an empty split, no features, non-finite values, a
    wrong dtype, or labels outside [0, n_classes) (a compiled kernel would index out of
    bounds with them). Every loader's output passes here, caches included, before any
    worker starts. ``finite=False`` skips the one check that reads every value
    (``dataset=npy dataset.check_finite=false``, for files validated before)."""
    from fastdist.errors import ConfigError

    def need(ok, message: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {message}")

    need(int(data.n_classes) >= 2, f"needs at least 2 classes, got {data.n_classes}")
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        need(
            isinstance(x, np.ndarray) and x.ndim == 2 and isinstance(y, np.ndarray) and y.ndim == 1,
            f"{split} features must be (rows, features) and labels (rows,), got "
            f"{getattr(x, 'shape', type(x).__name__)} and {getattr(y, 'shape', type(y).__name__)}",
        )
        need(len(x) == len(y), f"{len(x)} {split} rows but {len(y)} {split} labels")
        need(len(y) > 0, f"the {split} split is empty")
        need(x.dtype == np.float32, f"{split} features must be float32, got {x.dtype}")
        need(y.dtype.kind in "iu", f"{split} labels must be integers, got {y.dtype}")
        need(x.shape[1] > 0, f"{split} rows have no features")
        bad = _first_non_finite(x) if finite and x.ndim == 2 else None
        need(bad is None, f"{split} features contain NaN or infinite values (row {bad})")
        low, high = int(y.min()), int(y.max())
        need(
            low >= 0 and high < data.n_classes,
            f"{split} labels must be in [0, {data.n_classes}), found {low}..{high}",
        )
    need(
        data.x_train.shape[1] == data.x_test.shape[1],
        f"train rows have {data.x_train.shape[1]} features but test rows {data.x_test.shape[1]}",
    )
