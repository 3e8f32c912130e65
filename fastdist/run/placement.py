"""Where a run's workers sit and the run's shape once the data are known."""

from __future__ import annotations

from dataclasses import dataclass

from fastdist.optim.schedules import LearningRate, lr_scale
from fastdist.run.config_schema import enum_value
from fastdist.run.preparation import PreparedData, epoch_steps, plan_steps
from fastdist.run.watch import history_plan

__all__ = ["Placement", "RunPlan", "plan_run"]


@dataclass(frozen=True)
class Placement:
    """Where this process's workers sit: ``nodes`` MPI ranks (1 on one machine) of
    ``workers`` each; this node runs global workers first_worker .. first_worker+W-1."""

    nodes: int
    node: int
    workers: int
    mpi: bool = False

    @classmethod
    def of(cls, comm, workers: int) -> Placement:
        if comm is None:
            return cls(1, 0, workers)
        return cls(comm.Get_size(), comm.Get_rank(), workers, mpi=True)

    @property
    def total_workers(self) -> int:
        return self.nodes * self.workers

    @property
    def first_worker(self) -> int:
        return self.node * self.workers

    def node_rows(self, shards: list[tuple[int, int]]) -> tuple[slice, tuple]:
        """The part of the run's row order this node's workers read (all of it on one
        machine) and its workers' shards relative to it."""
        mine = shards[self.first_worker : self.first_worker + self.workers]
        start = mine[0][0] if self.mpi else 0
        rows = slice(start, mine[-1][1] if self.mpi else None)
        return rows, tuple((lo - start, hi - start) for lo, hi in mine)


@dataclass(frozen=True)
class RunPlan:
    """The run's shape once the data are known."""

    batch: int
    total_steps: int
    rates: LearningRate
    rows: slice
    shards: tuple
    steps_per_epoch: int
    history_every: int
    eval_every: int  # steps between scores of the combined model (0 = never)
    eval_at_sync: bool  # ... at the first sync at or past each of them
    epoch_steps: int = 1  # one epoch of the run (every node's: worker_overrides.epochs)


def plan_run(cfg, data: PreparedData, place: Placement, optimizer, lr_schedule) -> RunPlan:
    smallest = min(hi - lo for lo, hi in data.shards)
    batch, total_steps = plan_steps(cfg, data.n_train, place.total_workers, smallest)
    # One pure function of the global step: every worker computes the same rate.
    scale = lr_scale(enum_value(cfg.lr_scaling), place.total_workers)
    rates = LearningRate(optimizer.lr, scale, lr_schedule, total_steps)
    rows, shards = place.node_rows(data.shards)
    steps_per_epoch, history_every, eval_every = history_plan(cfg, shards, batch, place.mpi)
    return RunPlan(
        batch,
        total_steps,
        rates,
        rows,
        shards,
        steps_per_epoch,
        history_every,
        eval_every,
        bool(cfg.eval.at_sync),
        epoch_steps(data.n_train, place.total_workers, batch, smallest),
    )
