"""Step 3 of the recipe: run the pool to the end and apply ``on_worker_failure``.

* ``fail``: the first failure ends the run (raised by the pool within a second);
* ``continue``: a failed worker is excluded from the barrier and its shard dropped;
  the others finish (only for combiners without in-training sync);
* ``respawn``: EVERY worker restarts from the last checkpoint (or the run's start).
  Not a single replacement: a worker killed between the two grad_avg barriers may have
  half-applied its slice of the update, which no new process could repair; restarting
  from a checkpoint is exact, so the run ends bitwise-identical to one that never failed.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from fastdist.combiners.base import Combiner
from fastdist.combiners.exchange import Sync
from fastdist.errors import ConfigError, WorkerError
from fastdist.run.checkpoint import read_checkpoint
from fastdist.run.distributed import NodeCoordinator
from fastdist.run.pool_cache import job_pool
from fastdist.run.worker import WorkerSpec, train_worker

__all__ = ["check_failure_policy", "supervise"]

log = logging.getLogger("fastdist")


def check_failure_policy(policy: str, combiner: Combiner, dist: str) -> None:
    if policy == "continue" and combiner.sync not in (Sync.NONE, Sync.ASYNC):
        raise ConfigError(
            f"on_worker_failure=continue cannot keep {combiner.name}'s synchronous steps "
            "going without a worker; use on_worker_failure=respawn"
        )
    if policy != "fail" and dist == "mpi":
        raise ConfigError("with dist=mpi a failed worker ends the job (on_worker_failure=fail)")


def supervise(
    arena,
    spec: WorkerSpec,
    progress,
    *,
    policy: str,
    max_respawns: int,
    pool_options: dict,
    comm=None,
    checkpoint_path: str | None = None,
    digest: str = "",
    reuse: bool = False,
):
    """Start the pool and supervise it to the end, applying the failure ``policy``.

    With ``reuse`` the workers may be a warm pool kept from the previous job (see
    :mod:`fastdist.run.pool_cache`); a failed attempt never leaves one behind.
    Returns the workers' final reports, the spec of the last attempt (its start step
    moves when workers are respawned from a checkpoint) and the failure events.
    """
    workers = len(spec.shards)
    kept = [name for name in spec.exchange.checkpointed if name in arena]  # a combiner's own
    initial = (
        arena["params"].copy(),
        arena["opt_state"].copy(),
        spec.start_step,
        {name: arena[name].copy() for name in kept},
    )
    failures: list[dict] = []
    while True:
        reuse_now = reuse and not comm  # dist=mpi: one-shot pools
        try:
            with job_pool(
                workers, train_worker, (spec,), pool_options, reuse=reuse_now, backend=spec.backend
            ) as pool:
                if comm:
                    node = NodeCoordinator(comm, arena, workers, spec.exchange)
                    done = node.run(pool, progress, spec.start_step, spec.total_steps)
                else:
                    done = pool.join(progress, tolerate_failures=policy == "continue")
            break
        except WorkerError as exc:
            if policy != "respawn" or len(failures) >= max_respawns:
                raise
            at_step = int(arena["progress"][:, 0].max())
            restart = _restore(arena, checkpoint_path, digest, initial)
            failures.append({"cause": str(exc), "at_step": at_step, "restarted_from_step": restart})
            log.warning(
                "%s at step %d: restarting every worker from step %d (%d/%d)",
                exc,
                at_step,
                restart,
                len(failures),
                max_respawns,
            )
            spec = dataclasses.replace(spec, start_step=restart)
            arena["progress"][:, 0] = restart
            progress.reset()
    for rank, result in done.items():
        if "failed" in result:  # on_worker_failure=continue
            steps = int(arena["progress"][rank, 0]) - spec.start_step
            failures.append(
                {
                    "cause": result["failed"],
                    "at_step": steps + spec.start_step,
                    "action": "dropped its shard; the others went on",
                }
            )
            log.warning("%s; the other workers go on", result["failed"])
            done[rank] = {"samples": steps * spec.batch_size, "failed": True}
    return done, spec, failures


def _restore(arena, checkpoint_path: str | None, digest: str, initial: tuple) -> int:
    """Put the last checkpoint (or the run's starting state) back into the arena."""
    if checkpoint_path and os.path.exists(checkpoint_path):
        extra = {name: arena[name].shape for name in initial[3]}
        state = read_checkpoint(
            checkpoint_path, digest, arena["params"].shape, arena["opt_state"].shape, extra
        )
        arena["params"][:], arena["opt_state"][:] = state["params"], state["opt_state"]
        for name, value in state["extra"].items():
            arena[name][:] = value
        return state["step"]
    params, opt_state, step, extra = initial
    arena["params"][:], arena["opt_state"][:] = params, opt_state
    for name, value in extra.items():
        arena[name][:] = value
    return step
