"""The typed schema behind ``conf/config.yaml``.

Registered in Hydra's ConfigStore, it makes a misspelt key or a wrong type a
composition error (reported by the CLI as one line) instead of a silent default.
Groups whose options differ in shape (combiners) stay untyped here and are checked by
their factory functions when instantiated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

__all__ = [
    "BackendConfig",
    "DatasetConfig",
    "ModelConfig",
    "OptimizerConfig",
    "CheckpointConfig",
    "FastdistConfig",
    "register_configs",
    "compose",
]


@dataclass
class BackendConfig:
    name: str = "numba"
    threads: int = 1  # math-library threads per worker: workers x threads <= cores
    compilation_cache: str | None = None  # JAX persistent compilation cache directory
    # Bind worker k to its own CPUs. JAX needs it: XLA sizes its thread pool from the
    # CPUs a process may run on, and its thread flags alone no longer pin it.
    pin_cpus: bool = False


@dataclass
class DatasetConfig:
    name: str = MISSING
    # synthetic
    n_train: int = 8192
    n_test: int = 2048
    n_features: int = 32
    n_classes: int = 10
    seed: int = 0
    # datasets with a fixed split
    test_fraction: float = 0.25
    split_seed: int = 0
    # datasets read from local files
    path: str | None = None


@dataclass
class ModelConfig:
    hidden: list[int] = field(default_factory=lambda: [64])


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class CheckpointConfig:
    every: int | None = None  # steps between checkpoints; null = never
    path: str | None = None  # default: checkpoint.npz in the run's output directory


@dataclass
class FastdistConfig:
    workers: int = 2
    seed: int = 0
    epochs: int = 10
    steps: int | None = None  # if set, train exactly this many steps per worker
    batch_size: int = 64  # per worker
    # Fraction of the training set held out for combiners that select by validation
    # accuracy (greedy soup). 0 = none; such a combiner then takes 0.1 and says so.
    validation_fraction: float = 0.0
    diagnostics: bool = True  # divergence, interpolation barrier, per-member accuracy
    save_states: bool = False  # write worker_states.npz for `fastdist-combine`
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str | None = None  # a checkpoint.npz to continue from
    # What a failed worker (exception, exit, signal) does to the run: "fail" stops it
    # within a second; "continue" lets the others finish (combiners without in-training
    # sync); "respawn" restarts the workers from the last checkpoint (or from step 0).
    on_worker_failure: str = "fail"
    max_respawns: int = 3
    dist: str = "local"  # "mpi": one node coordinator per MPI rank (mpirun -n R fastdist ...)
    backend: BackendConfig = field(default_factory=BackendConfig)
    combiner: Any = MISSING
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)


def register_configs() -> None:
    ConfigStore.instance().store(name="fastdist_schema", node=FastdistConfig)


def compose(overrides: list[str] | tuple[str, ...] = ()):
    """The run config for ``overrides``, composed exactly as the CLI would.

    For notebooks and tests: ``fastdist.train(fastdist.compose(["workers=4"]))``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("fastdist.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))
