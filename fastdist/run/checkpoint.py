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

import fcntl
import hashlib
import os
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from fastdist.data.npz import MissingArrays, NpzError, checker, read_npz
from fastdist.engine.files import replacing
from fastdist.errors import ConfigError, DivergenceError

__all__ = [
    "atomic_savez",
    "check_checkpoint_path",
    "config_hash",
    "settings_hash",
    "write_checkpoint",
    "read_checkpoint",
    "remove_abandoned_temporaries",
]

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
    "schedule",
    "lr_scaling",
    "aggregate",
    "compress",
    "byzantine",
)


# aggregate=, compress=, byzantine.*: part of the trajectory, hashed only when they
# differ from the plain mean of honest float32 rows (so older hashes stay valid).
_REDUCTION_DEFAULTS = {
    "aggregate": {"_target_": "fastdist.combiners.aggregators.mean"},
    "compress": {"_target_": "fastdist.combiners.compression.none"},
    "byzantine": {"count": 0, "workers": None},
}


def _is_default(node: dict, default: dict) -> bool:
    if "_target_" in default:
        return node.get("_target_") == default["_target_"]
    return all(node.get(k) in (v, []) for k, v in default.items())


def _set_lists(node) -> dict:
    """The lists a worker_overrides node sets (flattened: optimizer.lr, steps, ...)."""
    if not isinstance(node, dict):
        return {}
    flat = {f"optimizer.{k}": v for k, v in (node.get("optimizer") or {}).items()}
    # Like the run's own steps and epochs, the lengths are left out: a longer run may
    # resume a shorter one's checkpoint.
    flat.update({k: v for k, v in node.items() if k not in ("optimizer", "steps", "epochs")})
    return {k: v for k, v in flat.items() if v is not None}


def settings_hash(cfg, keys: tuple[str, ...]) -> str:
    """A short hash of the settings ``keys`` of a composed config."""
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    node = {key: plain.get(key) for key in keys if key not in _REDUCTION_DEFAULTS}
    if isinstance(node.get("backend"), dict):
        node["backend"] = {"name": node["backend"]["name"]}
    # The split defines the trajectory too; left out when IID so hashes written before
    # partitions existed still match.
    partition = plain.get("partition")
    if partition and not str(partition.get("_target_", "")).endswith(".iid"):
        node["partition"] = partition
    if plain.get("init_from"):  # where the workers started (absent: hashes stay valid)
        node["init_from"] = plain["init_from"]
    if "combiner" in keys:  # each worker's own settings (worker_overrides), if any
        own = _set_lists(plain.get("worker_overrides"))
        if own:
            node["worker_overrides"] = own
    for key, default in _REDUCTION_DEFAULTS.items():  # the same, for what workers send
        if key in keys and plain.get(key) and not _is_default(plain[key], default):
            node[key] = plain[key]
    text = OmegaConf.to_yaml(OmegaConf.create(node))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_hash(cfg) -> str:
    return settings_hash(cfg, _TRAJECTORY_KEYS)


def atomic_savez(path: Path, **arrays) -> None:
    """``np.savez`` to a temporary name beside ``path``, then rename: a reader never
    sees half a file, and the temporary file is removed on every failure path (a full
    disk, an exception, Ctrl-C). The writer holds an ``flock`` on it meanwhile, so one
    left by a killed writer is told apart from one being written
    (:func:`remove_abandoned_temporaries`)."""
    with replacing(path, suffix=".tmp.npz", lock=True) as fh:
        np.savez(fh, **arrays)


def remove_abandoned_temporaries(path: Path) -> list[Path]:
    """Remove ``.NAME.PID.tmp.npz`` files beside ``path`` that no writer holds (left by
    a writer killed with SIGKILL); return them."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp.npz"):
        try:
            with open(tmp, "rb") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue  # being written, or already gone
    return removed


def check_checkpoint_path(path: str | Path) -> None:
    """Before start-up: ``checkpoint.path`` must name a file we can create or replace."""
    path = Path(path)
    if path.is_dir() or not path.name:
        raise ConfigError(f"checkpoint.path={path} is a directory; name a file (e.g. ckpt.npz)")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{path.name}.{os.getpid()}.probe"
        probe.touch()
        probe.unlink()
        remove_abandoned_temporaries(path)
    except OSError as exc:
        raise ConfigError(
            f"checkpoint.path={path}: cannot write there ({exc.strerror or exc})"
        ) from None


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
    atomic_savez(
        path,
        params=params,
        opt_state=opt_state,
        step=np.int64(step),
        seed=np.int64(seed),
        config_hash=np.str_(digest),
        **{f"extra_{name}": value for name, value in extra.items()},
    )


_CHECKPOINT_KEYS = ("params", "opt_state", "step", "seed", "config_hash")


def read_checkpoint(
    path: str | Path, digest: str, params_shape=None, state_shape=None, extra_shapes=None
) -> dict:
    """The checkpoint at ``path``, every field checked; any problem is one ConfigError
    line. Shapes are checked when given (the run's model may not be built yet);
    ``extra_shapes`` (name -> shape) are the other arena arrays the run keeps (a
    combiner's round state), which the file must hold with those shapes."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"resume={path}: no such checkpoint")
    try:
        state = read_npz(path, _CHECKPOINT_KEYS, optional=lambda key: key.startswith("extra_"))
    except MissingArrays as exc:
        raise ConfigError(
            f"resume={path}: not a readable checkpoint (missing {', '.join(exc.missing)})"
        ) from None
    except NpzError as exc:
        raise ConfigError(f"resume={path}: not a readable checkpoint ({exc.detail})") from None
    need = checker(f"resume={path}: not a usable checkpoint (", ")")

    step, text = state["step"], state["config_hash"]
    need(step.shape == () and step.dtype.kind in "iu", "step is not an integer")
    need(int(step) >= 0, f"step {int(step)} is negative")
    need(text.shape == () and text.dtype.kind == "U", "config_hash is not text")
    if str(text) != digest:
        raise ConfigError(
            f"resume={path}: the checkpoint was written by a run with a different "
            "configuration (workers, seed, batch, combiner, data, model or optimizer differ)"
        )
    params, opt_state = state["params"], state["opt_state"]
    need(params.dtype.kind == "f" and opt_state.dtype.kind == "f", "arrays are not floats")
    need(
        bool(np.isfinite(params).all() and np.isfinite(opt_state).all()),
        "parameters are not finite",
    )
    if params_shape is not None and (
        params.shape != tuple(params_shape) or opt_state.shape != tuple(state_shape)
    ):
        raise ConfigError(f"resume={path}: the checkpoint's shapes do not match this model")
    extra = {
        key[len("extra_") :]: value for key, value in state.items() if key.startswith("extra_")
    }
    for name, shape in (extra_shapes or {}).items():
        if name not in extra or extra[name].shape != tuple(shape):
            raise ConfigError(f"resume={path}: the checkpoint lacks this combiner's {name}")
    return {"params": params, "opt_state": opt_state, "step": int(step), "extra": extra}
