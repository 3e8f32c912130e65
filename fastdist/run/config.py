"""The typed run configuration: one schema, one source of defaults.

Top-level keys and their defaults live in :class:`FastdistConfig` (``conf/config.yaml``
only chooses the groups). Each dataset has its own dataclass
(:data:`fastdist.data.datasets.DATASETS`); each record (combiner, model, optimizer, schedule) gets
a schema generated from its factory's keyword arguments, so a factory's signature is
the one place its options and defaults are written. Every group YAML extends its schema
(``/schema/<group>/<name>@_here_`` in its defaults list): a misspelt key or a wrong type
is an error when the config is composed, reported by the CLI as one line.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import types
import typing
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from omegaconf import MISSING

from fastdist.conf import RECORD_GROUPS, registered
from fastdist.data.datasets import DATASETS, check_dataset_config
from fastdist.errors import ConfigError
from fastdist.run.history import HistoryConfig
from fastdist.run.loggers import LoggerConfig
from fastdist.run.progress import ProgressMode

__all__ = [
    "checkpointing",
    "default_max_workers",
    "enum_value",
    "validate",
    "Backend",
    "BackendConfig",
    "CheckpointConfig",
    "Dist",
    "FailurePolicy",
    "FastdistConfig",
    "PoolConfig",
    "LrScaling",
    "compose",
    "record_schema",
    "schema_class",
    "schema_options",
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
    # Periodic evaluation (the model after the first sync at or past every eval_every
    # steps, scored after training; see fastdist.run.accounting) and the accuracy whose
    # first crossing metrics.json reports as time-to-accuracy.
    eval_every: int | None = None
    target_accuracy: float | None = None
    save_states: bool = False  # write worker_states.npz for `fastdist-combine`
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
    logger: Any = MISSING
    pool: PoolConfig = field(default_factory=PoolConfig)
    combiner: Any = MISSING
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING  # the learning-rate schedule (conf/schedule/)
    partition: Any = MISSING  # how the training rows are split across workers


def _schema_type(annotation: Any) -> Any:
    """The annotation in a form OmegaConf accepts (Any where it would not)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in (int, float, bool, str):
        return annotation
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return _schema_type(rest[0]) | None
        if set(rest) <= {int, float}:
            return float | None if type(None) in args else float
        return Any
    if origin in (list, tuple) and len(args) >= 1 and args[0] in (int, float, bool, str):
        return list[args[0]]
    return Any


def record_schema(target: str) -> type:
    """A dataclass of the keyword arguments (with defaults) of the factory ``target``.

    Arguments without a default are what fastdist itself passes (a model's
    ``input_shape`` and ``n_classes``), not settings.
    """
    module, _, attr = target.rpartition(".")
    factory = getattr(importlib.import_module(module), attr)
    hints = typing.get_type_hints(factory)
    fields: list = [("_target_", str, field(default=target))]
    for param in inspect.signature(factory).parameters.values():
        if param.default is inspect.Parameter.empty or param.kind is param.VAR_KEYWORD:
            continue
        kind = _schema_type(hints.get(param.name, Any))
        default = param.default
        if isinstance(default, list | tuple):
            spec = field(default_factory=lambda value=tuple(default): list(value))
        else:
            spec = field(default=default)
        fields.append((param.name, kind, spec))
    return make_dataclass(f"{attr}_schema", fields)


def schema_options() -> dict[str, tuple[str, ...]]:
    """The typed schemas fastdist gives Hydra, by config group (``""``: top level).

    Served by ``hydra_plugins/fastdist_hydra/schemas.py`` (``fastdist://`` on the search
    path), which builds each with :func:`schema_class` when a composition first needs it.
    """
    options = {
        "": ("fastdist_schema",),
        "schema/logger": ("logger",),
        "schema/dataset": tuple(DATASETS),
    }
    for group in RECORD_GROUPS:
        options[f"schema/{group}"] = tuple(registered(group))
    return options


def schema_class(path: str) -> type:
    """The dataclass behind the schema ``path`` (``fastdist_schema`` or
    ``schema/<group>/<name>``)."""
    if path == "fastdist_schema":
        return FastdistConfig
    _, group, name = path.split("/")
    if group == "logger":
        return LoggerConfig
    if group == "dataset":
        return DATASETS[name][0]
    return record_schema(registered(group)[name])


def compose(overrides: list[str] | tuple[str, ...] = ()):
    """The run config for ``overrides``, composed exactly as the CLI would.

    For notebooks and tests: ``fastdist.train(fastdist.compose(["workers=4"]))``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("fastdist.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def enum_value(value) -> str:
    """An enum setting as its plain string (``Backend.numba`` -> ``"numba"``)."""
    return str(value.value if isinstance(value, enum.Enum) else value)


def validate(cfg) -> None:
    """Check every number before any work starts, so bad input costs nothing and reads
    as one line. (Types were checked by the schema when the config was composed; the
    records check their own options when they are built.)"""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(int(cfg.workers) >= 1, f"workers must be >= 1, got {cfg.workers}")
    limit = cfg.get("max_workers")
    limit = default_max_workers() if limit is None else int(limit)
    need(
        int(cfg.workers) <= limit,
        f"workers={cfg.workers} is more than the limit of {limit} "
        f"({'max_workers' if cfg.get('max_workers') is not None else '4x the CPUs here'}): "
        f"they would only take turns; set max_workers={cfg.workers} to run it anyway",
    )
    need(0 <= int(cfg.seed) < 2**32, f"seed must be in [0, 2**32), got {cfg.seed}")
    need(int(cfg.batch_size) >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    need(int(cfg.epochs) >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    need(cfg.steps is None or int(cfg.steps) >= 1, f"steps must be >= 1, got {cfg.steps}")
    need(int(cfg.backend.threads) >= 1, f"backend.threads must be >= 1, got {cfg.backend.threads}")
    need(int(cfg.max_respawns) >= 0, f"max_respawns must be >= 0, got {cfg.max_respawns}")
    history = cfg.history
    need(int(history.every) >= 0, f"history.every must be >= 0, got {history.every}")
    eval_every = history.eval_every
    need(
        eval_every is None or int(eval_every) >= 0,
        f"history.eval_every must be >= 0, got {eval_every}",
    )
    timeout = cfg.worker_timeout
    need(
        timeout is None or float(timeout) > 0,
        f"worker_timeout must be > 0 seconds or null, got {timeout}",
    )
    every = cfg.eval_every
    need(every is None or int(every) >= 1, f"eval_every must be >= 1 or null, got {every}")
    check_dataset_config(cfg.dataset)
    reference = cfg.combiner.get("reference") if hasattr(cfg.combiner, "get") else None
    need(
        not isinstance(reference, int)
        or enum_value(cfg.dist) != "local"
        or 0 <= reference < int(cfg.workers),
        f"combiner.reference={reference} must name one of the {cfg.workers} workers "
        f"(0..{int(cfg.workers) - 1})",
    )
    checkpointing(cfg)


def default_max_workers() -> int:
    """The default ``max_workers``: 4x the CPUs this process may use, at least 8."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(8, 4 * cpus)


def checkpointing(cfg) -> tuple[int | None, str | None]:
    """(steps between checkpoints, file) or (None, None) when the run takes none."""
    every = cfg.checkpoint.every
    if every is None:
        return None, None
    if int(every) < 1:
        raise ConfigError(f"checkpoint.every must be >= 1 or null, got {every}")
    path = cfg.checkpoint.path
    if path is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            path = f"{HydraConfig.get().runtime.output_dir}/checkpoint.npz"
        except ValueError:  # not inside a Hydra app (Python API)
            path = "checkpoint.npz"
    return int(every), str(path)
