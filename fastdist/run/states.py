"""Saving the workers' final parameters, so combiners can be compared on the very same
trained models ("train once, combine many"). The model itself is rebuilt from the run's
own config; the file holds the parameter rows and what training left behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fastdist.errors import ConfigError

__all__ = ["save_states", "load_states", "STATES_FILE"]

STATES_FILE = "worker_states.npz"


def save_states(
    directory: str | Path,
    worker_params: np.ndarray,
    samples_seen: np.ndarray,
    validation_fraction: float,
    sync: str,
) -> Path:
    path = Path(directory) / STATES_FILE
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        worker_params=worker_params,
        samples_seen=samples_seen,
        validation_fraction=np.float64(validation_fraction),
        sync=np.str_(sync),
    )
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    return path


def load_states(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / STATES_FILE
    if not path.exists():
        raise ConfigError(f"no saved worker states at {path} (train with save_states=true)")
    with np.load(path) as data:
        return {
            "worker_params": data["worker_params"],
            "samples_seen": data["samples_seen"],
            "validation_fraction": float(data["validation_fraction"]),
            "sync": str(data["sync"]),
        }
