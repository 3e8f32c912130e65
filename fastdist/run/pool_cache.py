"""One warm worker pool per process, handed from job to job of a sweep.

Hydra's basic launcher runs a multirun's jobs one after another in one process (and
joblib's loky workers run many jobs each). When a job needs the same worker count,
backend and thread settings as the one before, it runs on the previous job's workers
(:class:`~fastdist.engine.warm_pool.WarmPool`): no spawn, no imports, no kernel loading.
Everything that makes a run a run stays per job: the arena (created and unlinked by
the coordinator for each job, and attached by the workers for that job only), seeds,
failure policy, metrics.

A sequential multirun starts its pool ahead of its first job (:class:`SweepWarmPool`'s
``on_multirun_start``): Hydra then spends a while composing and validating every job's
config, and the workers' interpreters start and import meanwhile. That happens only
when the sweep keeps one pool for all its jobs (nothing that shapes the pool is swept,
the launcher runs jobs in this process, ``pool.reuse`` is not false, ``dist=local``).

A job that fails in any way (an error, a worker's death, a tolerated failure under
``on_worker_failure=continue``, Ctrl-C) shuts the pool down; the next job starts fresh.
A kept worker lost while idle (killed between jobs) is not the job's failure: the job
learns it before any worker started it (:class:`WarmPoolLost`) and runs on fresh
workers instead.
The last pool is shut down when the sweep ends (:class:`SweepWarmPool`, a Hydra
callback), and in any case when the process exits (atexit).

``pool.reuse``: true/false, or null (the default) for "true in a multirun, false for a
single run".
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from hydra.experimental.callback import Callback

from fastdist.engine.warm_pool import WarmPool, WarmPoolLost

__all__ = [
    "SweepWarmPool",
    "job_pool",
    "pool_options",
    "reuse_requested",
    "shutdown_warm_pool",
    "warm_pool",
]

log = logging.getLogger("fastdist")

_lock = threading.Lock()
_warm: WarmPool | None = None
_atexit_registered = False


def reuse_requested(cfg) -> bool:
    """``pool.reuse``, with null meaning: reuse inside a Hydra multirun only."""
    pool = cfg.get("pool") if hasattr(cfg, "get") else None
    setting = pool.get("reuse") if pool is not None else None
    if setting is not None:
        return bool(setting)
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except (ValueError, AttributeError):  # not inside a Hydra app (Python API, tests)
        return False


def warm_pool() -> WarmPool | None:
    """The pool kept for the next job, if any (for tests and diagnostics)."""
    return _warm


def shutdown_warm_pool() -> None:
    """Stop the kept pool, if any. Safe to call at any time, also twice."""
    global _warm
    with _lock:
        pool, _warm = _warm, None
    if pool is not None:
        pool.shutdown()


def pool_options(cfg, backend: str) -> dict:
    """How a run's pool starts its workers: threads, CPUs, and the backend's environment
    (set before the worker's imports)."""
    threads = int(cfg.backend.threads)
    env = {}
    if backend == "jax":
        from fastdist.models.kernels.jax_mlp import configure_jax_threads

        cache = cfg.backend.compilation_cache
        env = configure_jax_threads(threads, None if cache is None else str(cache))
    return {
        "threads": threads,
        "extra_env": env,
        "pin_cpus": bool(cfg.backend.pin_cpus),
        "worker_timeout": cfg.get("worker_timeout"),
    }


# Settings that shape a pool: if a sweep varies one, its jobs do not share one pool.
_POOL_KEYS = ("workers", "backend", "pool", "dist", "experiment", "worker_timeout")
_BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def _sweeps_the_pool(config) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept = [
        o.get_key_element()
        for o in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        if o.is_sweep_override()
    ]
    swept += list((config.hydra.sweeper.get("params") or {}).keys())
    return any(key.lstrip("+~").split(".")[0].split("@")[0] in _POOL_KEYS for key in swept)


def _pool_for_sweep(config) -> tuple[int, str, dict] | None:
    """The pool every job of this multirun will ask for, if they all ask for one."""
    from fastdist.run.config_checks import validate
    from fastdist.run.config_schema import enum_value

    if config.hydra.launcher.get("_target_") != _BASIC_LAUNCHER:
        return None  # jobs run in other processes (joblib, submitit)
    if config.pool.reuse is False or enum_value(config.dist) != "local":
        return None
    if _sweeps_the_pool(config):
        return None
    validate(config)  # no workers for a config the first job will refuse (workers=0, ...)
    backend = enum_value(config.backend.name)
    return int(config.workers), backend, pool_options(config, backend)


class SweepWarmPool(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml): start the sweep's pool
    while Hydra prepares the jobs, and stop it when the sweep is over."""

    def on_multirun_start(self, config, **kwargs) -> None:
        global _warm
        try:
            wanted = _pool_for_sweep(config)
            candidate = _new_pool(*wanted) if wanted is not None else None
        except Exception as exc:  # the first job meets it again and says what is wrong
            log.debug("no pool started ahead of the sweep: %s", exc)
            return
        with _lock:
            _warm = candidate

    def on_multirun_end(self, config, **kwargs) -> None:
        shutdown_warm_pool()


def _environment_key() -> tuple:
    # A warm worker keeps the environment it was started with: a job run under other
    # FASTDIST_* variables (fault injection, for one) needs fresh workers.
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("FASTDIST_")))


def _preload(backend: str) -> tuple[str, ...]:
    """What every job's workers import (the worker loop, and JAX for its backend), for a
    pool to import as it starts."""
    return ("fastdist.run.worker", "jax") if backend == "jax" else ("fastdist.run.worker",)


def _new_pool(workers: int, backend: str, options: dict) -> WarmPool:
    global _atexit_registered
    candidate = WarmPool(
        workers, extra_key=(backend, _environment_key()), preload=_preload(backend), **options
    )
    try:
        candidate.start()
    except BaseException:
        candidate.shutdown()
        raise
    if not _atexit_registered:
        atexit.register(shutdown_warm_pool)
        _atexit_registered = True
    return candidate


def _acquire(workers: int, backend: str, options: dict) -> tuple[WarmPool, bool]:
    """A pool for the next job, and whether it is the kept one."""
    global _warm
    extra_key = (backend, _environment_key())
    with _lock:
        kept, _warm = _warm, None
    if kept is not None:
        # alive() only spares a job a pool already known dead; one whose worker dies
        # after it (or is dying) is caught when the job is handed out (WarmPoolLost).
        if kept.key == WarmPool.key_for(workers, extra_key, **options) and kept.alive():
            if kept.jobs_run:
                log.info("workers kept warm from the previous job (%d before)", kept.jobs_run)
            else:
                log.info("workers started while the sweep was being prepared")
            return kept, True
        kept.shutdown()
    return _new_pool(workers, backend, options), False


class _WarmJob:
    """One job's view of a warm pool: what supervision calls on a one-shot pool.

    ``replace`` starts fresh workers for the job when the kept ones turn out lost as it
    is handed out (nothing of it ran: it runs again, unchanged); None for a pool
    started for this job, whose loss is the job's failure."""

    def __init__(
        self, pool: WarmPool, target: Callable, args: tuple, replace: Callable | None = None
    ) -> None:
        self.pool, self._target, self._args, self._replace = pool, target, args, replace

    @property
    def barrier(self):
        return self.pool.barrier

    def join(self, on_message=None, tolerate_failures: bool = False) -> dict[int, Any]:
        try:
            return self.pool.run(self._target, self._args, on_message, tolerate_failures)
        except WarmPoolLost as lost:
            if self._replace is None:
                raise
            log.warning("%s; the job runs on fresh workers", lost)
            self.pool.shutdown()
            self.pool, self._replace = self._replace(), None
        return self.pool.run(self._target, self._args, on_message, tolerate_failures)


@contextlib.contextmanager
def job_pool(
    workers: int,
    target: Callable,
    args: tuple,
    pool_options: dict,
    *,
    reuse: bool = False,
    backend: str = "",
) -> Iterator[Any]:
    """Workers for one job: an object with ``join(on_message, tolerate_failures)``.

    Without ``reuse`` a pool of its own, stopped when the block ends.
    With it, the kept warm pool if it fits (else a new one), kept again for the next
    job only if this one ended cleanly.
    """
    global _warm
    if not reuse:
        shutdown_warm_pool()  # a single run after a sweep in one process
        # A warm pool used for one job: the same workers, dismissed at the end (they
        # then exit at once instead of finalizing their interpreter).
        pool = WarmPool(workers, **pool_options)
        try:
            pool.start()
            yield _WarmJob(pool, target, args)
        finally:
            pool.shutdown()
        return
    pool, kept = _acquire(workers, backend, pool_options)
    replace = (lambda: _new_pool(workers, backend, pool_options)) if kept else None
    job = _WarmJob(pool, target, args, replace)
    try:
        yield job
    except BaseException:
        job.pool.shutdown()  # a replaced pool is already shut down
        raise
    if job.pool.usable:
        with _lock:
            _warm = job.pool
    else:
        job.pool.shutdown()
