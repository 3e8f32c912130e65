"""Checkpoints: everything needed to continue a run exactly where it stopped.

The state of a run is small: the parameter rows, the optimizer-state rows, the number
of steps taken, and whatever else a combiner keeps in the arena (``extra``: a
local-update round's server model, outer-optimizer state and control variates). Batch
order is a pure function of (seed, worker, epoch), so no RNG object needs saving; the
seed is recorded with the rest. Files are written to a
temporary name and renamed, so a crash mid-write leaves the previous checkpoint intact,
and a state that is not finite is never written, so a diverged run keeps its last good
checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from fastdist.errors import ConfigError, DivergenceError

__all__ = ["config_hash", "write_checkpoint", "read_checkpoint"]

# What defines the trajectory; the run's length, outputs and diagnostics do not.
_TRAJECTORY_KEYS = (
    "workers",
    "seed",
    "batch_size",
    "validation_fraction",
    "backend",
    "combiner",
    "dataset",
    "model",
    "optimizer",
)


def config_hash(cfg) -> str:
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    node = {key: plain.get(key) for key in _TRAJECTORY_KEYS}
    node["backend"] = {"name": node["backend"]["name"]} if node["backend"] else None
    # The split defines the trajectory too; left out when IID so hashes written before
    # partitions existed still match.
    partition = plain.get("partition")
    if partition and not str(partition.get("_target_", "")).endswith(".iid"):
        node["partition"] = partition
    text = OmegaConf.to_yaml(OmegaConf.create(node))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_checkpoint(
    path: str | Path,
    params: np.ndarray,
    opt_state: np.ndarray,
    step: int,
    seed: int,
    digest: str,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    extra = extra or {}
    arrays = [params, opt_state, *extra.values()]
    if not all(np.isfinite(a).all() for a in arrays):
        raise DivergenceError(
            f"parameters are not finite at step {step}; kept the last good checkpoint "
            f"{path}; try a smaller optimizer.lr"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        params=params,
        opt_state=opt_state,
        step=np.int64(step),
        seed=np.int64(seed),
        config_hash=np.str_(digest),
        **{f"extra_{name}": value for name, value in extra.items()},
    )
    os.replace(tmp, path)


def read_checkpoint(
    path: str | Path, digest: str, params_shape, state_shape, extra_shapes=None
) -> dict:
    """The checkpoint's arrays; ``extra_shapes`` (name -> shape) are the other arena
    arrays the run keeps, which the file must hold with those shapes."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"resume={path}: no such checkpoint")
    try:
        with np.load(path) as data:
            state = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"resume={path}: not a readable checkpoint ({exc})") from None
    if str(state["config_hash"]) != digest:
        raise ConfigError(
            f"resume={path}: the checkpoint was written by a run with a different "
            "configuration (workers, seed, batch, combiner, data, model or optimizer differ)"
        )
    if state["params"].shape != tuple(params_shape) or state["opt_state"].shape != tuple(
        state_shape
    ):
        raise ConfigError(f"resume={path}: the checkpoint's shapes do not match this model")
    extra = {}
    for name, shape in (extra_shapes or {}).items():
        value = state.get(f"extra_{name}")
        if value is None or value.shape != tuple(shape):
            raise ConfigError(f"resume={path}: the checkpoint lacks this combiner's {name}")
        extra[name] = value
    return {
        "params": state["params"],
        "opt_state": state["opt_state"],
        "step": int(state["step"]),
        "extra": extra,
    }
