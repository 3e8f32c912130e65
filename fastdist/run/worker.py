"""The training loop each worker runs on its shard, against the shared arena.

Everything a worker touches is shared: the training set (read-only, in the run's
RowStore: shared memory, or a memory-mapped .npy file) and, in the arena, the parameter
and optimizer-state rows and its own gradient slot. The combiner's schedule
(``SyncSchedule.sync_at``) decides where the workers meet at the barrier; see the
comments at each sync point.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from fastdist.combiners.base import Sync, SyncSchedule
from fastdist.engine.allreduce import average_rows, mean_rows_into, slice_bounds
from fastdist.engine.faults import fault_plan
from fastdist.engine.rows import RowsSpec, open_rows
from fastdist.engine.shm import ArenaSpec, SharedArena
from fastdist.errors import DivergenceError
from fastdist.models.base import Model
from fastdist.optim.base import Optimizer
from fastdist.optim.clipping import GlobalNormClip
from fastdist.optim.schedules import LearningRate
from fastdist.run.accounting import Snapshots
from fastdist.run.history import StepReporter
from fastdist.run.node_sync import NodeSync
from fastdist.run.rounds import ROUND_STATE, LocalRounds

__all__ = ["WorkerSpec", "train_worker", "epoch_order"]


@dataclass(frozen=True)
class WorkerSpec:
    """Picklable description of the job, identical for every worker."""

    arena: ArenaSpec
    data: RowsSpec  # training features/labels and the order of the rows (read-only)
    model: Model
    backend: str
    schedule: SyncSchedule
    shards: tuple[tuple[int, int], ...]
    batch_size: int
    total_steps: int
    optimizer: Optimizer
    seed: int
    threads: int
    backend_options: dict = field(default_factory=dict)
    start_step: int = 0  # > 0 when resuming from a checkpoint
    checkpoint_every: int | None = None
    checkpoint_path: str | None = None
    config_hash: str = ""
    # dist=mpi: this node's workers are global workers rank_offset .. rank_offset+W-1,
    # and every sync goes through the node coordinator (hierarchical allreduce).
    hierarchical: bool = False
    rank_offset: int = 0
    # run/history.py: a step report every history_every steps, and a parameter
    # snapshot every eval_every steps (0 = never).
    history_every: int = 0
    eval_every: int = 0
    # The rate of each global step (schedule x lr_scaling); None: optimizer.lr throughout.
    rates: LearningRate | None = None
    # Periodic evaluation of federated/synced runs (fastdist.run.accounting): worker 0
    # copies the model into the arena after the first sync at or past every
    # ``sync_eval_every`` steps; the coordinator scores the copies after training.
    sync_eval_every: int | None = None


def epoch_order(seed: int, rank: int, epoch: int, shard_size: int) -> np.ndarray:
    """The order in which worker ``rank`` visits its shard in ``epoch`` (reproducible)."""
    return np.random.default_rng([seed, rank, epoch]).permutation(shard_size)


def train_worker(ctx, spec: WorkerSpec) -> None:
    from fastdist.engine.threads import apply_in_worker, blas_thread_counts

    apply_in_worker(spec.threads)
    arena = SharedArena.attach(spec.arena)
    try:
        with open_rows(spec.data) as rows:
            _train(ctx, spec, arena, rows, blas_thread_counts)
    finally:
        arena.close()


def _train(ctx, spec: WorkerSpec, arena: SharedArena, rows, blas_thread_counts) -> None:
    rank, n_workers = ctx.rank, ctx.n_workers
    model, schedule, opt = spec.model, spec.schedule, spec.optimizer
    kernel = model.kernel(spec.backend, spec.batch_size)  # backend imports happen here
    batch = spec.batch_size
    # The shard is a slice of the row order: rows stored once, shuffled by index.
    x_all, y_all, order_all, prefetch = rows
    lo, hi = spec.shards[rank]
    shard_rows = order_all[lo:hi]
    steps_per_epoch = (hi - lo) // batch

    # opt_state is (state vectors, rows, P): each state vector's rows are contiguous, so
    # averaging one across workers is the same reduction as averaging parameters.
    param_rows, state_rows, grads = arena["params"], arena["opt_state"], arena["grads"]
    params = param_rows[0] if schedule.shares_parameters else param_rows[rank]
    state = [rows[0] if schedule.shares_state else rows[rank] for rows in state_rows]
    grad = grads[rank]
    # The part of the vector this worker reduces and updates at every sync point.
    my_lo, my_hi = slice_bounds(params.shape[0], n_workers, rank)
    node = NodeSync(arena, rank) if spec.hierarchical else None
    rounds = None
    if schedule.rounds is not None:  # local-update rounds with an outer optimizer
        rounds = LocalRounds(
            arena, schedule.rounds, rank=rank, n_workers=n_workers, seed=spec.seed,
            total_steps=spec.total_steps, shards=spec.shards,
        )  # fmt: skip
    snapshots = (
        Snapshots(arena, spec.sync_eval_every, rounds, spec.start_step) if rank == 0 else None
    )
    round_state = {name: arena[name] for name in ROUND_STATE if name in arena}
    sync_seconds, computed = 0.0, 0  # time between a sync's barriers; batches computed
    # Steps done, readable by the coordinator even if this process dies.
    progress = arena["progress"][rank]
    fault = fault_plan()  # None except in fault-injection tests
    reporter = StepReporter(ctx, spec, arena, params)
    clip = None
    if opt.clip_norm is not None:
        clip = GlobalNormClip(opt.clip_norm, arena["grad_norm_parts"], rank, ctx.barrier)

    # The only per-step copy: gathering the shuffled minibatch into contiguous buffers.
    xb = np.empty((batch, model.n_inputs), dtype=np.float32)
    yb = np.empty(batch, dtype=np.int32)

    # Compile (or load from Numba's cache) before the clock starts, on a scratch
    # gradient so the shared slot stays untouched.
    scratch = np.empty_like(grad)
    first = shard_rows[:batch]
    kernel.loss_and_grad(params, x_all[first], y_all[first], scratch)
    del scratch
    _load_update_code(opt, params, state, grad, grads, param_rows, my_lo, spec.start_step)
    compiled = getattr(kernel, "compile_count", 0)
    ctx.send("ready", {"threads": blas_thread_counts(), "cpus": sorted(os.sched_getaffinity(0))})
    ctx.barrier.wait()  # everyone compiled: start the clock together

    start = time.monotonic()
    first_step_done = None
    step = spec.start_step
    epoch, first_batch = divmod(step, steps_per_epoch)
    while step < spec.total_steps:
        order = epoch_order(spec.seed, spec.rank_offset + rank, epoch, hi - lo)
        loss_sum, correct, seen = 0.0, 0, 0
        epoch_start = time.monotonic()
        for b in range(first_batch, steps_per_epoch):
            if step >= spec.total_steps:
                break
            if fault is not None:
                fault.maybe_fire(rank, step)
            trains = rounds is None or rounds.trains(step)  # partial participation idles
            loss, n_right = 0.0, 0
            if trains:
                idx = shard_rows[order[b * batch : (b + 1) * batch]]
                if prefetch is not None and b + 1 < steps_per_epoch:  # a file: read ahead
                    prefetch(shard_rows[order[(b + 1) * batch : (b + 2) * batch]])
                np.take(x_all, idx, axis=0, out=xb, mode="clip")
                np.take(y_all, idx, out=yb, mode="clip")
                loss, n_right = kernel.loss_and_grad(params, xb, yb, grad)
                computed += 1
            if not math.isfinite(loss):
                raise DivergenceError(
                    f"loss became {loss} at step {step} (epoch {epoch}); try a smaller optimizer.lr"
                )
            lr = opt.lr if spec.rates is None else spec.rates(step)
            synced = time.perf_counter()
            if rounds is not None:
                if trains:
                    rounds.correct(grad, params)  # FedProx / SCAFFOLD terms
                    scale = 1.0 if clip is None else clip.scale_for_own(grad)
                    opt.update(
                        params, state, grad, 0, params.shape[0], step, lr=lr, grad_scale=scale
                    )
                synced = time.perf_counter()
                if rounds.sync_at(step):
                    rounds.sync(ctx.barrier, step, param_rows, state_rows)
            elif schedule.exchange is Sync.GRADIENTS:
                # Sync point 1: every gradient slot is written. Worker k then averages
                # slice k of all slots and updates slice k of the shared parameters
                # (reduce-scatter fused with a sharded optimizer step). Clipping first
                # meets the others once more to add up the norm of the mean.
                ctx.barrier.wait()
                if node is None:
                    scale = 1.0 if clip is None else clip.scale_for_mean(grads, my_lo, my_hi)
                    opt.update_from_mean(
                        params, state, grads, my_lo, my_hi, step, lr=lr, grad_scale=scale
                    )
                else:
                    # Across nodes: node mean of the slice, then the coordinator's
                    # MPI allreduce turns it into the global mean, then the update.
                    mean_rows_into(grads, node.means[0], my_lo, my_hi)
                    node.allreduce()
                    mean = node.means[0]
                    scale = 1.0 if clip is None else clip.scale_for_slices(mean, my_lo, my_hi)
                    opt.update(params, state, mean, my_lo, my_hi, step, lr=lr, grad_scale=scale)
                # Sync point 2: the whole parameter vector is updated before anyone
                # starts the next forward pass.
                ctx.barrier.wait()
            else:
                # Own parameters (local SGD, independent training), or, under Hogwild,
                # the shared vector written without a lock while others read it.
                scale = 1.0 if clip is None else clip.scale_for_own(grad)
                opt.update(params, state, grad, 0, params.shape[0], step, lr=lr, grad_scale=scale)
                synced = time.perf_counter()
                if schedule.sync_at(step):
                    ctx.barrier.wait()  # all rows hold their local step's result
                    averaged = [param_rows]
                    if schedule.average_state:
                        averaged += list(state_rows)
                    if node is None:
                        for rows in averaged:
                            average_rows(rows, my_lo, my_hi)
                    else:
                        node.average_rows(averaged, my_lo, my_hi)
                    ctx.barrier.wait()  # every row holds the average
            if schedule.exchange is not Sync.NONE:
                sync_seconds += time.perf_counter() - synced
            if snapshots is not None:
                snapshots.maybe_take(step, schedule, param_rows, start)
            if first_step_done is None:
                first_step_done = time.monotonic()
            loss_sum += loss * batch
            correct += n_right
            seen += batch if trains else 0
            step += 1
            progress[0] = step
            ctx.heartbeat(step)  # liveness: the coordinator notices a frozen worker
            reporter.after_step(step, loss, batch)
            if spec.checkpoint_every and step % spec.checkpoint_every == 0:
                _checkpoint(ctx, spec, param_rows, state_rows, step, round_state)
        first_batch = 0
        ctx.send(
            "epoch",
            {
                "epoch": epoch,
                "loss_sum": loss_sum,
                "correct": correct,
                "seen": seen,
                "seconds": time.monotonic() - epoch_start,
            },
        )
        epoch += 1
    ctx.send(
        "done",
        {
            "start": start,
            "end": time.monotonic(),
            "first_step_done": first_step_done,
            "steps": step - spec.start_step,
            "samples": computed * batch,
            "sync_seconds": sync_seconds,
            # JIT backends: compilations after the warm-up call (should stay 0)
            "recompilations": getattr(kernel, "compile_count", 0) - compiled,
        },
    )


def _load_update_code(opt, params, state, grad, grads, param_rows, at: int, step: int) -> None:
    """Compile (or load from Numba's cache) the optimizer's updates and the parameter
    average before the clock starts, by calling them on empty ranges: nothing changes.

    Why: under ``backend=jax`` no Numba code has run yet at this point, and the first
    update then paid Numba's start-up inside the timed run (W1, measured: 220 ms of a
    0.8 s 40-step run; 6 ms under ``backend=numba``)."""
    opt.update(params, state, grad, at, at, step)
    opt.update_from_mean(params, state, grads, at, at, step)
    average_rows(param_rows, at, at)


def _checkpoint(ctx, spec: WorkerSpec, param_rows, state_rows, step: int, round_state) -> None:
    """Every worker stops at the same step; worker 0 snapshots all rows, then writes
    them while the others go on (they only change rows after the second barrier)."""
    ctx.barrier.wait()  # every row holds the state after ``step`` steps
    if ctx.rank == 0:
        params, opt_state = param_rows.copy(), state_rows.copy()
        extra = {name: rows.copy() for name, rows in round_state.items()}
    ctx.barrier.wait()  # snapshot taken
    if ctx.rank == 0:
        from fastdist.run.checkpoint import write_checkpoint

        write_checkpoint(
            spec.checkpoint_path, params, opt_state, step, spec.seed, spec.config_hash, extra
        )
