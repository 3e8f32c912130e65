"""Checks of a composed run config's values, before any work starts: the numbers the
schema's types cannot judge, the dataset's settings, and where checkpoints go."""

from __future__ import annotations

import math

from fastdist.data.datasets import check_dataset_config
from fastdist.engine.memory import available_ram_bytes, human_bytes
from fastdist.errors import ConfigError
from fastdist.run.config_schema import enum_value

__all__ = ["check_override_types", "checkpointing", "default_max_workers", "validate"]

# The least a worker process costs (an interpreter with NumPy and Numba loaded, before
# any data): measured RSS is about twice this. Used only to refuse absurd worker counts
# before anything is allocated.
WORKER_PROCESS_BYTES = 64 << 20


def validate(cfg) -> None:
    """Check every number before any work starts, so bad input costs nothing and reads
    as one line. (Types were checked by the schema when the config was composed; the
    records check their own options when they are built.)"""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    _check_finite(cfg)
    need(int(cfg.workers) >= 1, f"workers must be >= 1, got {cfg.workers}")
    limit = cfg.get("max_workers")
    need(limit is None or int(limit) >= 1, f"max_workers must be >= 1 or null, got {limit}")
    limit = default_max_workers() if limit is None else int(limit)
    need(
        int(cfg.workers) <= limit,
        f"workers={cfg.workers} is more than the limit of {limit} "
        f"({'max_workers' if cfg.get('max_workers') is not None else '4x the CPUs here'}): "
        f"they would only take turns; set max_workers={cfg.workers} to run it anyway",
    )
    _check_machine_fits(int(cfg.workers))
    need(0 <= int(cfg.seed) < 2**32, f"seed must be in [0, 2**32), got {cfg.seed}")
    need(int(cfg.batch_size) >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    need(int(cfg.epochs) >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    need(cfg.steps is None or int(cfg.steps) >= 1, f"steps must be >= 1, got {cfg.steps}")
    need(int(cfg.backend.threads) >= 1, f"backend.threads must be >= 1, got {cfg.backend.threads}")
    need(int(cfg.max_respawns) >= 0, f"max_respawns must be >= 0, got {cfg.max_respawns}")
    history = cfg.history
    need(int(history.every) >= 1, f"history.every must be >= 1, got {history.every}")
    evals = cfg.eval
    need(
        evals.every is None or int(evals.every) >= 0, f"eval.every must be >= 0, got {evals.every}"
    )
    target = evals.target_accuracy
    need(
        target is None or 0.0 <= float(target) <= 1.0,
        f"eval.target_accuracy must be in [0, 1], got {target}",
    )
    timeout = cfg.worker_timeout
    need(
        timeout is None or float(timeout) > 0,
        f"worker_timeout must be > 0 seconds or null, got {timeout}",
    )
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


def _check_finite(cfg) -> None:
    """Every number in the config is finite: an ``inf`` or ``nan`` rate, fraction or
    limit is a typo or a payload, never a setting."""
    from omegaconf import DictConfig, ListConfig

    def walk(node, key: str) -> None:
        if isinstance(node, DictConfig):
            for name, value in node.items():
                walk(value, f"{key}.{name}" if key else str(name))
        elif isinstance(node, ListConfig):
            for i, value in enumerate(node):
                walk(value, f"{key}[{i}]")
        elif isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(f"{key}={node} must be a finite number")

    for key, value in cfg.items():
        if key != "hydra":  # a sweep job's config carries Hydra's own node: not ours
            walk(value, str(key))


def _check_machine_fits(workers: int) -> None:
    """Refuse a worker count whose processes alone could not fit in this machine's
    memory, whatever ``max_workers`` says (it lets more workers than CPUs through, not
    more than the memory holds)."""
    ram = available_ram_bytes()
    if ram is not None and workers * WORKER_PROCESS_BYTES > ram:
        raise ConfigError(
            f"workers={workers} cannot run here: {workers} worker processes need at least "
            f"{human_bytes(workers * WORKER_PROCESS_BYTES)} of memory "
            f"({human_bytes(WORKER_PROCESS_BYTES)} each), and {human_bytes(ram)} is available"
        )


def check_override_types(cfg, overrides) -> None:
    """Refuse a quoted value where the config holds a number (``optimizer.lr='0.1'``):
    OmegaConf would convert it silently, so a string that only looks like a number (or
    a value meant for another key) would pass unnoticed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.is_sweep_override() or override.is_hydra_override():
            continue
        key, value = override.key_or_group, override.value()
        if not isinstance(value, str):
            continue
        held = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(held, int | float) and not isinstance(held, bool):
            raise ConfigError(
                f"{key}={value!r} is a string, but {key} is a number: write it unquoted"
            )


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
