"""The training loop each worker runs on its shard, against the shared arena.

Everything a worker touches is shared: the training set (read-only, in the run's
RowStore: shared memory, or a memory-mapped .npy file) and, in the arena, the parameter
and optimizer-state rows and its own gradient slot. A step is: the gradient on this
worker's batch; the combiner's ``local_step``; and, where the combiner's
``sync_at`` says so, its ``sync`` (:mod:`fastdist.combiners.exchange`).

Per-worker rows are indexed by the *global* rank: under ``dist=mpi`` every node holds
every worker's row, writes its own workers' rows, and its node coordinator gathers the
others' at a sync, so the combiner reduces the same rows in the same order as on one
machine.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from fastdist.combiners.attacks import flip_labels
from fastdist.combiners.exchange import Exchange, ExchangeView, Sync
from fastdist.engine.allreduce import average_rows, slice_bounds
from fastdist.engine.faults import fault_plan
from fastdist.engine.rows import RowsSpec, open_rows
from fastdist.engine.shm import ArenaSpec, SharedArena
from fastdist.errors import DivergenceError
from fastdist.models.base import Model
from fastdist.optim.base import Optimizer
from fastdist.optim.clipping import GlobalNormClip
from fastdist.optim.schedules import LearningRate
from fastdist.run.history import StepReporter
from fastdist.run.node_sync import NodeSync
from fastdist.run.worker_settings import WorkerSettings

__all__ = ["WorkerSpec", "train_worker", "epoch_order"]


@dataclass(frozen=True)
class WorkerSpec:
    """Picklable description of the job, identical for every worker."""

    arena: ArenaSpec
    data: RowsSpec  # training features/labels and the order of the rows (read-only)
    model: Model
    backend: str
    exchange: Exchange
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
    # Every global worker's shard size (weights of a federated mean; dist=mpi: all nodes').
    shard_sizes: tuple[int, ...] = ()
    # run/history.py: a step report every history_every steps, and a snapshot of the
    # model to score every eval_every steps (0 = never; eval_at_sync: at the first sync
    # at or past each of them; run/evaluation.py).
    history_every: int = 0
    eval_every: int = 0
    eval_at_sync: bool = False
    # The rate of each global step (schedule x lr_scaling); None: optimizer.lr throughout.
    rates: LearningRate | None = None
    # worker_overrides (fastdist.run.worker_settings): each worker's own optimizer,
    # rates, steps and data-order seed, by global rank; None: the run's for everyone.
    per_worker: WorkerSettings | None = None

    def settings_of(self, row: int) -> tuple[Optimizer, LearningRate | None, int, tuple]:
        """(optimizer, rates, steps, (seed, stream) of the data order) of global worker
        ``row``."""
        own = self.per_worker
        if own is None:
            return self.optimizer, self.rates, self.total_steps, (self.seed, row)
        order = own.order_of(row, self.seed)
        return own.optimizers[row], own.rates[row], own.steps[row], order


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
    rank = ctx.rank
    row = spec.rank_offset + rank  # this worker's row in every per-worker array
    model, exchange = spec.model, spec.exchange
    opt, rates, total_steps, (order_seed, order_stream) = spec.settings_of(row)
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
    params = param_rows[0] if exchange.shares_parameters else param_rows[row]
    state = [rows[0] if exchange.shares_state else rows[row] for rows in state_rows]
    grad = grads[row]
    # The part of the vector this worker reduces and updates at every sync point.
    my_lo, my_hi = slice_bounds(params.shape[0], ctx.n_workers, rank)
    clip = None
    if opt.clip_norm is not None:
        clip = GlobalNormClip(opt.clip_norm, arena["grad_norm_parts"], rank, ctx.barrier)
    meet = NodeSync(arena, rank).meet if spec.hierarchical else ctx.barrier.wait
    view = ExchangeView(
        arena=arena, rank=row, workers=grads.shape[0], lo=my_lo, hi=my_hi, optimizer=opt,
        params=params, state=state, grad=grad, param_rows=param_rows, state_rows=state_rows,
        grads=grads, meet=meet, barrier=ctx.barrier, clip=clip, seed=spec.seed,
        total_steps=total_steps, shard_sizes=spec.shard_sizes,
    )  # fmt: skip
    worker_exchange = exchange.worker(view)
    reduction = exchange.reduction
    flips_labels = reduction is not None and reduction.flips_labels(row)
    n_classes = model.n_classes
    round_state = {name: arena[name] for name in exchange.checkpointed if name in arena}
    sync_seconds, computed = 0.0, 0  # time between a sync's barriers; batches computed
    # Steps done, readable by the coordinator even if this process dies.
    progress = arena["progress"][rank]
    fault = fault_plan()  # None except in fault-injection tests
    reporter = StepReporter(ctx, spec, arena, params, own_steps=total_steps)

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
    while step < total_steps:
        order = epoch_order(order_seed, order_stream, epoch, hi - lo)
        loss_sum, correct, seen = 0.0, 0, 0
        epoch_start = time.monotonic()
        for b in range(first_batch, steps_per_epoch):
            if step >= total_steps:
                break
            if fault is not None:
                fault.maybe_fire(rank, step)
            trains = worker_exchange.trains(step)  # partial participation idles
            loss, n_right = 0.0, 0
            if trains:
                idx = shard_rows[order[b * batch : (b + 1) * batch]]
                if prefetch is not None and b + 1 < steps_per_epoch:  # a file: read ahead
                    prefetch(shard_rows[order[(b + 1) * batch : (b + 2) * batch]])
                np.take(x_all, idx, axis=0, out=xb, mode="clip")
                np.take(y_all, idx, out=yb, mode="clip")
                if flips_labels:  # a simulated label-flipping attacker (byzantine.*)
                    flip_labels(yb, n_classes)
                loss, n_right = kernel.loss_and_grad(params, xb, yb, grad)
                computed += 1
            if not math.isfinite(loss):
                raise DivergenceError(
                    f"loss became {loss} at step {step} (epoch {epoch}); try a smaller optimizer.lr"
                )
            lr = opt.lr if rates is None else rates(step)
            # The combiner's part of the step: its own update (local SGD, rounds,
            # Hogwild; nothing under gradient averaging), then, at a sync point, the
            # exchange (what meets, what is reduced, see each combiner's comments).
            if trains:
                worker_exchange.local_step(step, lr)
            synced = time.perf_counter()
            if exchange.sync_at(step, total_steps):
                worker_exchange.sync(step, lr)
            if exchange.kind is not Sync.NONE:
                sync_seconds += time.perf_counter() - synced
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
