"""The checks a job passes before anything is allocated, in one place: a run makes them
as it starts (:func:`fastdist.run.coordinator.train`), and the sweeper makes them for
every job of a multirun before the first one starts, so a bad value in the last job
costs no training at all.

They need no data and start nothing: the config's values (:func:`validate`), quoted
strings where numbers go, and every record the config names except the model (whose
shape comes from the data) built, which is where records check their own options.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastdist.combiners.base import Combiner
from fastdist.optim.base import Optimizer
from fastdist.optim.schedules import Schedule
from fastdist.run.config_checks import check_override_types, validate
from fastdist.run.config_schema import enum_value
from fastdist.run.records import (
    build_aggregate,
    build_combiner,
    build_compression,
    build_optimizer,
    build_partition,
    build_schedule,
)
from fastdist.run.robustness import reducing
from fastdist.run.supervision import check_failure_policy
from fastdist.run.worker_settings import check_worker_overrides

__all__ = ["CheckedJob", "check_job"]


@dataclass(frozen=True)
class CheckedJob:
    """The records a checked config names (built once; the run goes on with them)."""

    combiner: Combiner
    optimizer: Optimizer
    schedule: Schedule


def check_job(cfg, overrides: Sequence[str] = ()) -> CheckedJob:
    """Every check that needs no data, or a one-line ConfigError. ``overrides`` are the
    command-line overrides the config was composed from, when known."""
    validate(cfg)
    check_override_types(cfg, overrides)
    combiner, optimizer = build_combiner(cfg.combiner), build_optimizer(cfg.optimizer)
    schedule = build_schedule(cfg.schedule)
    build_partition(cfg.get("partition"))
    dist = enum_value(cfg.dist)
    # aggregate=, compress=, byzantine.*: checked against the worker count (the run
    # attaches them again once the model is known; under dist=mpi, once every node's
    # workers are: here only the records' own options can be checked).
    if dist == "mpi":
        build_aggregate(cfg.get("aggregate"))
        build_compression(cfg.get("compress"))
    else:
        reducing(cfg, combiner, int(cfg.workers), mpi=False)
    check_failure_policy(enum_value(cfg.on_worker_failure), combiner, dist)
    workers = int(cfg.workers) * (1 if dist == "local" else 0)
    if workers:  # dist=mpi: the run checks them once every node's workers are known
        check_worker_overrides(cfg, combiner, optimizer, workers)
        if combiner.check_workers is not None:
            combiner.check_workers(workers)
    return CheckedJob(combiner, optimizer, schedule)
