"""Saving the workers' final parameters, so combiners can be compared on the very same
trained models ("train once, combine many"). The model itself is rebuilt from the run's
own config; the file holds the parameter rows and what training left behind.

A run directory is untrusted input (copied around, edited, half-written), so the file
also carries :func:`split_hash`, the hash of every setting that decides the data split
and the meaning of the parameter vector (workers, seed, validation fraction, dataset,
model). ``fastdist-combine`` refuses states whose run config no longer gives that hash,
and checks every array before using it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastdist.data.npz import MissingArrays, NpzError, checker, read_npz
from fastdist.errors import ConfigError
from fastdist.run.checkpoint import atomic_savez, settings_hash

__all__ = ["save_states", "load_states", "split_hash", "STATES_FILE"]

STATES_FILE = "worker_states.npz"
_SPLIT_KEYS = ("workers", "seed", "validation_fraction", "dataset", "model")
_KEYS = ("worker_params", "samples_seen", "validation_fraction", "sync", "split_hash")


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
) -> Path:
    path = Path(directory) / STATES_FILE
    atomic_savez(
        path,
        worker_params=worker_params,
        samples_seen=samples_seen,
        validation_fraction=np.float64(validation_fraction),
        sync=np.str_(sync),
        split_hash=np.str_(digest),
    )
    return path


def load_states(path: str | Path) -> dict:
    """The saved states, each array checked; any problem is one ConfigError line."""
    path = Path(path)
    if path.is_dir():
        path = path / STATES_FILE
    if not path.is_file():
        raise ConfigError(f"no saved worker states at {path} (train with save_states=true)")
    try:
        raw = read_npz(path, _KEYS)
    except MissingArrays as exc:
        raise ConfigError(
            f"{path}: not a complete worker-states file (missing {', '.join(exc.missing)}; "
            "written by an older fastdist or edited): train again with save_states=true"
        ) from None
    except NpzError as exc:
        raise ConfigError(f"{path}: not a readable worker-states file ({exc.detail})") from None
    return _checked(path, raw)


def _checked(path: Path, raw: dict) -> dict:
    need = checker(f"{path}: ")
    params, seen = raw["worker_params"], raw["samples_seen"]
    need(
        params.ndim == 2 and params.shape[0] >= 1 and params.dtype.kind == "f",
        f"worker_params must be a float (workers, parameters) array, got {params.dtype}"
        f"{params.shape}",
    )
    need(bool(np.isfinite(params).all()), "worker_params contain NaN or infinite values")
    need(
        seen.shape == (params.shape[0],) and seen.dtype.kind in "iuf",
        f"samples_seen must have one number per worker row ({params.shape[0]}), got {seen.shape}",
    )
    need(bool(np.isfinite(seen).all() and (seen >= 0).all()), "samples_seen must be >= 0")
    scalars = [raw[key] for key in ("validation_fraction", "sync", "split_hash")]
    need(
        all(a.shape == () for a in scalars),
        "validation_fraction, sync and split_hash must be scalars",
    )
    need(raw["validation_fraction"].dtype.kind == "f", "validation_fraction must be a number")
    fraction = float(raw["validation_fraction"])
    need(0.0 <= fraction < 1.0, f"validation_fraction must be in [0, 1), got {fraction}")
    need(raw["sync"].dtype.kind == "U" and raw["split_hash"].dtype.kind == "U", "bad text fields")
    return {
        "worker_params": params.astype(np.float32, copy=False),
        "samples_seen": seen,
        "validation_fraction": fraction,
        "sync": str(raw["sync"]),
        "split_hash": str(raw["split_hash"]),
    }
