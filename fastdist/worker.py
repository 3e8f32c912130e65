"""The training loop each worker runs on its shard, against the shared arena.

Everything a worker touches lives in the arena: the training set (read-only), the
parameter and momentum rows, and its own gradient slot. The combiner's schedule decides
where the workers meet at the barrier; see the comments at each sync point.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from fastdist.allreduce import average_rows, mean_rows_into, slice_bounds
from fastdist.barrier import SpinBarrier
from fastdist.combiners.base import Sync
from fastdist.errors import DivergenceError
from fastdist.faults import fault_plan
from fastdist.model import ParamLayout
from fastdist.optim import SGD
from fastdist.shm import ArenaSpec, SharedArena

__all__ = ["WorkerSpec", "train_worker", "epoch_order"]


@dataclass(frozen=True)
class WorkerSpec:
    """Picklable description of the job, identical for every worker."""

    arena: ArenaSpec
    sizes: tuple[int, ...]
    backend: str
    sync: Sync
    period: int | None
    average_momentum: bool
    shards: tuple[tuple[int, int], ...]
    batch_size: int
    total_steps: int
    optimizer: SGD
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


def epoch_order(seed: int, rank: int, epoch: int, shard_size: int) -> np.ndarray:
    """The order in which worker ``rank`` visits its shard in ``epoch`` (reproducible)."""
    return np.random.default_rng([seed, rank, epoch]).permutation(shard_size)


def make_kernel(backend: str, layout: ParamLayout, max_batch: int):
    """The kernel object for ``backend``; imports happen here, inside the worker."""
    from fastdist.kernels import get_kernel

    return get_kernel(backend)(layout, max_batch)


def train_worker(ctx, spec: WorkerSpec) -> None:
    from fastdist.threads import apply_in_worker, blas_thread_counts

    apply_in_worker(spec.threads)
    arena = SharedArena.attach(spec.arena)
    try:
        _train(ctx, spec, arena, blas_thread_counts)
    finally:
        arena.close()


def _train(ctx, spec: WorkerSpec, arena: SharedArena, blas_thread_counts) -> None:
    rank, n_workers = ctx.rank, ctx.n_workers
    layout = ParamLayout(spec.sizes)
    kernel = make_kernel(spec.backend, layout, spec.batch_size)
    batch = spec.batch_size
    x_all, y_all = arena["x_train"], arena["y_train"]
    lo, hi = spec.shards[rank]
    shard_x, shard_y = x_all[lo:hi], y_all[lo:hi]  # views: the shard is never copied
    steps_per_epoch = (hi - lo) // batch

    param_rows, momentum_rows, grads = arena["params"], arena["momentum"], arena["grads"]
    params = param_rows[0] if spec.sync in (Sync.GRADIENTS, Sync.ASYNC) else param_rows[rank]
    momentum = momentum_rows[0] if spec.sync is Sync.GRADIENTS else momentum_rows[rank]
    grad = grads[rank]
    # The part of the vector this worker reduces and updates at every sync point.
    my_lo, my_hi = slice_bounds(layout.size, n_workers, rank)
    opt = spec.optimizer
    node = _NodeSync(arena, rank) if spec.hierarchical else None
    # Steps done, readable by the coordinator even if this process dies.
    progress = arena["progress"][rank]
    fault = fault_plan()  # None except in fault-injection tests

    # The only per-step copy: gathering the shuffled minibatch into contiguous buffers.
    xb = np.empty((batch, layout.n_inputs), dtype=np.float32)
    yb = np.empty(batch, dtype=np.int32)

    # Compile (or load from Numba's cache) before the clock starts, on a scratch
    # gradient so the shared slot stays untouched.
    scratch = np.empty_like(grad)
    kernel.loss_and_grad(params, shard_x[:batch], shard_y[:batch], scratch)
    del scratch
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
            idx = order[b * batch : (b + 1) * batch]
            np.take(shard_x, idx, axis=0, out=xb, mode="clip")
            np.take(shard_y, idx, out=yb, mode="clip")
            loss, n_right = kernel.loss_and_grad(params, xb, yb, grad)
            if not math.isfinite(loss):
                raise DivergenceError(
                    f"loss became {loss} at step {step} (epoch {epoch}); try a smaller optimizer.lr"
                )
            if spec.sync is Sync.GRADIENTS:
                # Sync point 1: every gradient slot is written. Worker k then averages
                # slice k of all slots and updates slice k of the shared parameters
                # (reduce-scatter fused with a sharded optimizer step).
                ctx.barrier.wait()
                if node is None:
                    opt.step_from_mean(params, momentum, grads, my_lo, my_hi)
                else:
                    # Across nodes: node mean of the slice, then the coordinator's
                    # MPI allreduce turns it into the global mean, then the update.
                    mean_rows_into(grads, node.mean, my_lo, my_hi)
                    node.allreduce()
                    opt.step(params, momentum, node.mean, my_lo, my_hi)
                # Sync point 2: the whole parameter vector is updated before anyone
                # starts the next forward pass.
                ctx.barrier.wait()
            else:
                # Own parameters (local SGD, independent training), or, under Hogwild,
                # the shared vector written without a lock while others read it.
                opt.step(params, momentum, grad)
                if spec.sync is Sync.PARAMETERS and spec.period and (step + 1) % spec.period == 0:
                    ctx.barrier.wait()  # all rows hold their local step's result
                    if node is None:
                        average_rows(param_rows, my_lo, my_hi)
                        if spec.average_momentum:
                            average_rows(momentum_rows, my_lo, my_hi)
                    else:
                        node.average_rows(
                            param_rows, momentum_rows, spec.average_momentum, my_lo, my_hi
                        )
                    ctx.barrier.wait()  # every row holds the average
            if first_step_done is None:
                first_step_done = time.monotonic()
            loss_sum += loss * batch
            correct += n_right
            seen += batch
            step += 1
            progress[0] = step
            if spec.checkpoint_every and step % spec.checkpoint_every == 0:
                _checkpoint(ctx, spec, param_rows, momentum_rows, step)
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
            "samples": (step - spec.start_step) * batch,
            # JIT backends: compilations after the warm-up call (should stay 0)
            "recompilations": getattr(kernel, "compile_count", 0) - compiled,
        },
    )


def _checkpoint(ctx, spec: WorkerSpec, param_rows, momentum_rows, step: int) -> None:
    """Every worker stops at the same step; worker 0 snapshots all rows, then writes
    them while the others go on (they only change rows after the second barrier)."""
    ctx.barrier.wait()  # every row holds the state after ``step`` steps
    if ctx.rank == 0:
        params, momentum = param_rows.copy(), momentum_rows.copy()
    ctx.barrier.wait()  # snapshot taken
    if ctx.rank == 0:
        from fastdist.checkpoint import write_checkpoint

        write_checkpoint(spec.checkpoint_path, params, momentum, step, spec.seed, spec.config_hash)


class _NodeSync:
    """A worker's side of the hierarchical allreduce (dist=mpi).

    The node barrier has one more party than there are workers: the node coordinator.
    Workers write the node mean of their slice, meet the coordinator (it allreduces the
    buffer in place across nodes with MPI), and meet it again once the global mean is
    there.
    """

    def __init__(self, arena: SharedArena, rank: int) -> None:
        self.barrier = SpinBarrier(arena["node_barrier"], rank)
        self.mean = arena["node_mean"]
        self.mean_momentum = arena["node_mean_momentum"]

    def allreduce(self) -> None:
        self.barrier.wait()  # the node mean is complete: the coordinator may send it
        self.barrier.wait()  # the buffers hold the mean over all nodes

    def average_rows(self, param_rows, momentum_rows, with_momentum: bool, lo: int, hi: int):
        mean_rows_into(param_rows, self.mean, lo, hi)
        if with_momentum:
            mean_rows_into(momentum_rows, self.mean_momentum, lo, hi)
        self.allreduce()
        param_rows[:, lo:hi] = self.mean[lo:hi]
        if with_momentum:
            momentum_rows[:, lo:hi] = self.mean_momentum[lo:hi]
