"""Saving the workers' final parameters, so combiners can be compared on the very same
trained models ("train once, combine many"). The model itself is rebuilt from the run's
own config; the file holds the parameter rows and what training left behind.

A run directory is untrusted input (copied around, edited, half-written), so the file
also carries :func:`split_hash`, the hash of every setting that decides the data split
and the meaning of the parameter vector (workers, seed, validation fraction, dataset,
model). ``fastdist-combine`` refuses states whose run config no longer gives that hash,
and checks every array before using it. The hash catches a directory edited by mistake
or put together from two runs; it authenticates nothing (whoever can write the file can
recompute it), which is why nothing read from a run directory may name code to run
(:mod:`fastdist.run.saved_overrides`) and every array is checked as if hostile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastdist.data.npz import MissingArrays, NpzError, checker, read_npz
from fastdist.errors import ConfigError
from fastdist.run.checkpoint import atomic_savez, settings_hash

__all__ = ["save_states", "load_states", "read_settings", "split_hash", "STATES_FILE"]

STATES_FILE = "worker_states.npz"
_SPLIT_KEYS = ("workers", "seed", "validation_fraction", "dataset", "model")
_SCALARS = ("validation_fraction", "sync", "split_hash")
_ROWS = ("worker_params", "samples_seen")
_BASE = "base_params"  # optional: absent when the workers started independently


def split_hash(cfg) -> str:
    """What must not change between training and combining (see the module doc)."""
    return settings_hash(cfg, _SPLIT_KEYS)


def save_states(
    directory: str | Path,
    worker_params: np.ndarray,
    samples_seen: np.ndarray,
    validation_fraction: float,
    sync: str,
    digest: str = "",
    base: np.ndarray | None = None,
) -> Path:
    """``base``: the parameters every worker started from (init_from, or the shared
    start), kept for merges from a common base (task arithmetic, TIES, ...)."""
    path = Path(directory) / STATES_FILE
    extra = {} if base is None else {_BASE: np.asarray(base, dtype=np.float32)}
    atomic_savez(
        path,
        worker_params=worker_params,
        samples_seen=samples_seen,
        validation_fraction=np.float64(validation_fraction),
        sync=np.str_(sync),
        split_hash=np.str_(digest),
        **extra,
    )
    return path


def read_settings(path: str | Path) -> dict:
    """The small fields of the states file (``validation_fraction``, ``sync``,
    ``split_hash``), checked; the parameter rows are not read."""
    path = _states_path(path)
    need = checker(f"{path}: ")
    raw = _read(path, _SCALARS, {key: () for key in _SCALARS})
    need(raw["validation_fraction"].dtype.kind == "f", "validation_fraction must be a number")
    fraction = float(raw["validation_fraction"])
    need(0.0 <= fraction < 1.0, f"validation_fraction must be in [0, 1), got {fraction}")
    need(raw["sync"].dtype.kind == "U" and raw["split_hash"].dtype.kind == "U", "bad text fields")
    return {
        "validation_fraction": fraction,
        "sync": str(raw["sync"]),
        "split_hash": str(raw["split_hash"]),
    }


def load_states(path: str | Path, workers: int, n_params: int) -> dict:
    """The saved states of a run of ``workers`` workers and a model of ``n_params``
    parameters, each array checked; any problem is one ConfigError line. The shapes are
    compared with the headers before any array is inflated. ``base`` is the starting
    parameters when the file keeps them, else None."""
    path = _states_path(path)
    settings = read_settings(path)
    shapes = {"worker_params": (workers, n_params), "samples_seen": (workers,), _BASE: (n_params,)}
    raw = _read(path, _ROWS, shapes, optional=lambda name: name == _BASE)
    need = checker(f"{path}: ")
    params, seen = raw["worker_params"], raw["samples_seen"]
    need(params.dtype.kind == "f", f"worker_params must be floats, got {params.dtype}")
    params = _as_float32(params)  # checked after the cast: 1e300 would become inf
    need(bool(np.isfinite(params).all()), "worker_params contain NaN or infinite values")
    need(seen.dtype.kind in "iuf", f"samples_seen must be numbers, got {seen.dtype}")
    need(bool(np.isfinite(seen).all() and (seen >= 0).all()), "samples_seen must be >= 0")
    base = raw.get(_BASE)
    if base is not None:
        need(base.dtype.kind == "f", f"{_BASE} must be floats, got {base.dtype}")
        base = _as_float32(base)
        need(bool(np.isfinite(base).all()), f"{_BASE} contain NaN or infinite values")
    return {
        **settings,
        "worker_params": params,
        "samples_seen": seen,
        "base": base,
    }


def _as_float32(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(np.float32, copy=False)


def _states_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / STATES_FILE
    if not path.is_file():
        raise ConfigError(f"no saved worker states at {path} (train with save_states=true)")
    return path


def _read(path: Path, keys: tuple[str, ...], shapes: dict, optional=None) -> dict:
    try:
        return read_npz(path, keys, optional, shapes=shapes)
    except MissingArrays as exc:
        raise ConfigError(
            f"{path}: not a complete worker-states file (missing {', '.join(exc.missing)}; "
            "written by an older fastdist or edited): train again with save_states=true"
        ) from None
    except NpzError as exc:
        raise ConfigError(f"{path}: not a readable worker-states file ({exc.detail})") from None
