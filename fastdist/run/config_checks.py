"""Checks of a composed run config's values, before any work starts: the numbers the
schema's types cannot judge, the dataset's settings, and where checkpoints go."""

from __future__ import annotations

from fastdist.data.datasets import check_dataset_config
from fastdist.errors import ConfigError
from fastdist.run.config_schema import enum_value

__all__ = ["checkpointing", "default_max_workers", "validate"]


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
