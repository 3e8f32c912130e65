"""The top-level run settings: :class:`FastdistConfig`, its nested sections and enums.

These dataclasses are the schema Hydra checks every composed config against, and their
defaults are the only defaults (``conf/config.yaml`` only chooses the groups); the
comments beside the fields are the settings' documentation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from fastdist.run.evaluation import EvalConfig
from fastdist.run.history import HistoryConfig
from fastdist.run.progress import ProgressMode

__all__ = [
    "Backend",
    "BackendConfig",
    "ByzantineConfig",
    "CheckpointConfig",
    "Dist",
    "FailurePolicy",
    "FastdistConfig",
    "LrScaling",
    "PoolConfig",
    "WorkerOverrides",
    "enum_value",
]


class Backend(enum.Enum):
    numba = "numba"
    jax = "jax"
    reference = "reference"


# What a failed worker (exception, exit, signal) does to the run: "fail" stops it within
# a second; "continue" lets the others finish (combiners without in-training sync);
# "respawn" restarts every worker from the last checkpoint (or step 0). The functional
# form because "continue" is a keyword (OmegaConf matches members by name).
FailurePolicy = enum.Enum("FailurePolicy", [(v, v) for v in ("fail", "continue", "respawn")])


# optimizer.lr times 1, the number of workers, or its square root (Goyal et al. 2017's
# linear rule; pair it with a warm-up, e.g. schedule.warmup_steps).
LrScaling = enum.Enum("LrScaling", [(v, v) for v in ("none", "linear", "sqrt")])


class Dist(enum.Enum):
    local = "local"
    mpi = "mpi"  # one node coordinator per MPI rank (mpirun -n R fastdist ...)


@dataclass
class BackendConfig:
    name: Backend = Backend.numba
    threads: int = 1  # math-library threads per worker: workers x threads <= cores
    compilation_cache: str | None = None  # JAX persistent compilation cache directory
    # Bind worker k to its own CPUs. JAX needs it: XLA sizes its thread pool from the
    # CPUs a process may run on, and its thread flags alone no longer pin it.
    pin_cpus: bool = False


@dataclass
class CheckpointConfig:
    every: int | None = None  # steps between checkpoints; null = never
    path: str | None = None  # default: checkpoint.npz in the run's output directory


@dataclass
class ByzantineConfig:
    """Simulated faulty workers (fastdist.combiners.attacks): who attacks and how."""

    count: int = 0  # this many workers, chosen from the seed...
    workers: list[int] | None = None  # ...or exactly these global ranks
    # sign_flip | gaussian | scaled | label_flip | alie | ipm
    attack: str = "sign_flip"
    scale: float = 10.0  # scaled: publish scale x the honest vector
    sigma: float = 1.0  # gaussian: publish N(0, sigma^2) noise
    z: float | None = None  # alie: null = Baruch et al.'s z_max for n and f
    epsilon: float = 0.1  # ipm: publish -epsilon x the honest mean


@dataclass
class OptimizerOverrides:
    """Per-worker values of the optimizer's options (those its factory takes)."""

    lr: list[float] | None = None
    weight_decay: list[float] | None = None
    momentum: list[float] | None = None  # sgd
    beta1: list[float] | None = None  # adamw, lion
    beta2: list[float] | None = None  # adamw, lion


@dataclass
class WorkerOverrides:
    """Per-worker hyperparameters (fastdist.run.worker_settings): each list holds one
    value per worker, in rank order; what no list sets is the run's own."""

    # e.g. worker_overrides.optimizer.lr=[0.1,0.03,0.01,0.003]
    optimizer: OptimizerOverrides = field(default_factory=OptimizerOverrides)
    schedule: list[str] | None = None  # a conf/schedule name per worker (its defaults)
    data_seed: list[int] | None = None  # the seed of each worker's data order
    steps: list[int] | None = None  # steps per worker (refused by combiners that sync)
    epochs: list[int] | None = None  # ... or epochs per worker


@dataclass
class PoolConfig:
    # Keep the workers alive from one job to the next when they fit (same workers,
    # backend, threads): null = yes inside a multirun, no for a single run.
    reuse: bool | None = None


@dataclass
class FastdistConfig:
    workers: int = 2  # worker processes (per node under dist=mpi)
    seed: int = 0
    epochs: int = 20
    steps: int | None = None  # if set, train exactly this many steps per worker
    batch_size: int = 32  # per worker
    # Fraction of the training set held out for combiners that select by validation
    # accuracy (greedy soup). 0 = none; such a combiner then takes 0.1 and says so.
    validation_fraction: float = 0.0
    diagnostics: bool = True  # divergence, interpolation barrier, per-member accuracy
    save_states: bool = False  # write worker_states.npz for `fastdist-combine`
    save_model: bool = False  # write model.npz: the combined model (fastdist.load, init_from)
    init_from: str | None = (
        None  # a saved model.npz (or its run directory): every worker starts from it
    )
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str | None = None  # a checkpoint.npz to continue from
    on_worker_failure: FailurePolicy = FailurePolicy["fail"]
    max_respawns: int = 3
    # Seconds a worker may make no progress (stopped, stuck) before it counts as
    # failed; null = max(60 s, 10x the slowest step so far). Start-up gets >= 10 min.
    worker_timeout: float | None = None
    # Refuse more workers than this (default: 4x the CPUs this process may use, at
    # least 8): beyond it they only take turns. Set it to run more anyway.
    max_workers: int | None = None
    dist: Dist = Dist.local
    lr_scaling: LrScaling = LrScaling["none"]
    backend: BackendConfig = field(default_factory=BackendConfig)
    # Watching a run (run/progress.py, run/history.py): the display, how chatty the
    # log is, and the history.csv rows (plus a tracker: logger=tensorboard).
    progress: ProgressMode = ProgressMode.auto  # auto | bar | lines | off
    verbose: bool = False  # also log every history row
    quiet: bool = False  # warnings and errors only; no display
    history: HistoryConfig = field(default_factory=HistoryConfig)
    # Scoring the combined model during training (fastdist.run.evaluation): how often,
    # whether at sync points, and the accuracy whose first crossing metrics.json reports.
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: Any = MISSING
    pool: PoolConfig = field(default_factory=PoolConfig)
    combiner: Any = MISSING
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING  # the learning-rate schedule (conf/schedule/)
    partition: Any = MISSING  # how the training rows are split across workers
    # How averaging combiners reduce what workers publish (conf/aggregate/), what the
    # workers send (conf/compress/), and which of them attack.
    aggregate: Any = MISSING
    compress: Any = MISSING
    byzantine: ByzantineConfig = field(default_factory=ByzantineConfig)
    # Each worker's own hyperparameters (soup ingredients: partition=replicate,
    # init_from=a base model, worker_overrides.optimizer.lr=[...]).
    worker_overrides: WorkerOverrides = field(default_factory=WorkerOverrides)


def enum_value(value) -> str:
    """An enum setting as its plain string (``Backend.numba`` -> ``"numba"``)."""
    return str(value.value if isinstance(value, enum.Enum) else value)
