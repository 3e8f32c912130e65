"""The coordinator: split, spawn, train, combine, evaluate, clean up.

``train(cfg)`` is the whole recipe for one run; the CLI, the tests and the benchmarks
all go through it. The coordinator never trains: it fills the arena, supervises the
workers, and evaluates the combined model once they are done.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from fastdist.combiners.base import Combiner, Sync
from fastdist.engine.barrier import barrier_shape, check_memory_order
from fastdist.engine.cleanup import remove_stale_segments
from fastdist.engine.shm import SharedArena
from fastdist.errors import ConfigError
from fastdist.models.base import Model
from fastdist.optim.base import Optimizer
from fastdist.run.checkpoint import config_hash, read_checkpoint
from fastdist.run.combine import combine, describe_model
from fastdist.run.config import checkpointing, enum_value, validate
from fastdist.run.distributed import gather_rows, world
from fastdist.run.preparation import PreparedData, init_seed, plan_steps, prepare_data
from fastdist.run.preparation import validation_fraction as held_out_fraction
from fastdist.run.progress import EpochLog
from fastdist.run.records import build_combiner, build_model, build_optimizer
from fastdist.run.supervision import check_failure_policy, supervise
from fastdist.run.worker import WorkerSpec

__all__ = ["RunResult", "train"]

log = logging.getLogger("fastdist")


@dataclass
class RunResult:
    """What a run produced: the metrics written to metrics.json, and the final
    per-worker parameters (for saving and re-combining)."""

    metrics: dict
    worker_params: np.ndarray
    model: Model
    samples_seen: np.ndarray
    validation_fraction: float = 0.0
    sync: str = "none"


def train(cfg) -> RunResult:
    """Run one training job described by a composed config (see conf/config.yaml)."""
    validate(cfg)
    check_memory_order()
    for name in remove_stale_segments():
        log.warning("removed /dev/shm/%s, left by a run that was killed", name)
    combiner, optimizer = build_combiner(cfg.combiner), build_optimizer(cfg.optimizer)
    fraction = held_out_fraction(cfg, combiner)
    check_failure_policy(enum_value(cfg.on_worker_failure), combiner, enum_value(cfg.dist))
    comm = _mpi_world(cfg, combiner)
    n_nodes, node = (comm.Get_size(), comm.Get_rank()) if comm else (1, 0)
    workers, seed = int(cfg.workers), int(cfg.seed)  # workers per node

    # 1. Split: shuffle once, cut the shards; the model follows the data's shape.
    data = prepare_data(cfg, workers * n_nodes, fraction)
    model = build_model(cfg.model, data.dataset.input_shape, data.dataset.n_classes)
    if combiner.check_model is not None:
        combiner.check_model(model)
    batch, total_steps = plan_steps(cfg, len(data.y_train), workers * n_nodes)
    backend = enum_value(cfg.backend.name)
    model.kernel(backend, 1)  # an unknown or uninstalled backend fails here, not in a worker
    # This node's workers are global workers node*W .. node*W + W-1; the arena holds
    # only their rows (all rows when there is one node).
    node_shards = data.shards[node * workers : (node + 1) * workers]
    rows = slice(node_shards[0][0] if comm else 0, node_shards[-1][1] if comm else None)
    local_shards = tuple((lo - (rows.start or 0), hi - (rows.start or 0)) for lo, hi in node_shards)
    digest = config_hash(cfg)
    every, checkpoint_path = checkpointing(cfg)

    # 2. One shared-memory arena: training rows, parameters, optimizer state, gradients.
    arrays = _arena_arrays(data, rows, model, optimizer, combiner, workers, hierarchical=bool(comm))
    with SharedArena.create(arrays) as arena:
        _fill_arena(arena, data, rows, model, combiner, seed, node * workers, keep_copy=bool(comm))
        start_step = _resume(cfg, arena, digest, total_steps)
        spec = WorkerSpec(
            arena=arena.spec,
            model=model,
            backend=backend,
            schedule=combiner.schedule,
            shards=local_shards,
            batch_size=batch,
            total_steps=total_steps,
            optimizer=optimizer,
            seed=seed,
            threads=int(cfg.backend.threads),
            backend_options=_backend_options(cfg),
            start_step=start_step,
            checkpoint_every=every,
            checkpoint_path=checkpoint_path,
            config_hash=digest,
            hierarchical=comm is not None,
            rank_offset=node * workers,
        )
        log.info(
            "training %s on %s: %s%d workers x batch %d, %d steps, backend %s, model %s",
            combiner.name,
            data.dataset.name,
            f"{n_nodes} nodes x " if comm else "",
            workers,
            batch,
            total_steps,
            backend,
            describe_model(model),
        )
        # 3. Spawn the workers and train, under the failure policy.
        spawned = time.monotonic()
        progress = EpochLog(workers, quiet=node != 0)
        done, spec, failures = supervise(
            arena,
            spec,
            progress,
            policy=enum_value(cfg.on_worker_failure),
            max_respawns=int(cfg.max_respawns),
            pool_options=_pool_options(cfg, backend),
            comm=comm,
            checkpoint_path=checkpoint_path,
            digest=digest,
        )
        finished = [d for d in done.values() if "failed" not in d]
        worker_params = arena["params"].copy()
        samples_seen = np.array([done[r]["samples"] for r in range(workers)], dtype=np.int64)
        train_seconds = max(d["end"] for d in finished) - min(d["start"] for d in finished)
        if comm:
            if not combiner.shares_parameters:
                worker_params = gather_rows(comm, worker_params)
            samples_seen = gather_rows(comm, samples_seen)
            train_seconds = comm.allreduce(train_seconds, op=_mpi_max())
            if node != 0:  # rank 0 combines, evaluates and reports for the whole job
                data.x_train = data.y_train = None
                return RunResult({}, arena["params"].copy(), model, np.zeros(0), fraction)
        # 4-5. Combine and evaluate, inside the arena's lifetime: data-dependent
        # combiners read the shards from it.
        metrics = combine(
            combiner, worker_params, model, data, samples_seen, seed, bool(cfg.diagnostics)
        )
        data.x_train = data.y_train = None  # drop the views before the arena closes
    # 6. Cleaned up: the pool is gone, the arena unlinked (also on any error above).
    first_step = max(d["first_step_done"] or d["end"] for d in finished)
    metrics.update(
        {
            "train_seconds": train_seconds,
            "samples_per_second": float(samples_seen.sum()) / max(train_seconds, 1e-12),
            "startup_seconds": first_step - spawned,
            "workers": workers * n_nodes,
            "nodes": n_nodes,
            "dist": "mpi" if comm else "local",
            "backend": backend,
            "dataset": data.dataset.name,
            "seed": seed,
            "batch_size": batch,
            "steps": total_steps,
            "samples_seen": int(samples_seen.sum()),
            "model": model.describe(),
            "n_params": model.layout.size,
            "optimizer": optimizer.name,
            "init": combiner.init,
            "deterministic": combiner.deterministic,
            "validation_rows": 0 if data.validation is None else len(data.validation[1]),
            "worker_blas_threads": progress.max_threads,
            "worker_cpu_affinity": [progress.cpus.get(r) for r in range(workers)],
            "resumed_from_step": start_step,
            "recompilations_after_warmup": max(d["recompilations"] for d in finished),
            "on_worker_failure": enum_value(cfg.on_worker_failure),
            "failures": failures,
            "checkpoint": checkpoint_path,
        }
    )
    log.info(
        "test_accuracy %.4f  test_loss %.4f  %.0f samples/s over %.2f s",
        metrics["test_accuracy"],
        metrics["test_loss"],
        metrics["samples_per_second"],
        train_seconds,
    )
    return RunResult(metrics, worker_params, model, samples_seen, fraction, combiner.sync.value)


def _arena_arrays(
    data: PreparedData,
    rows: slice,
    model: Model,
    optimizer: Optimizer,
    combiner: Combiner,
    workers: int,
    hierarchical: bool,
) -> dict:
    """Name -> (shape, dtype) of everything the workers share."""
    size = model.layout.size
    param_rows = 1 if combiner.shares_parameters else workers
    state_rows = 1 if combiner.shares_state else workers
    n_state = len(optimizer.state_names)
    arrays = {
        "x_train": (data.x_train[rows].shape, np.float32),
        "y_train": (data.y_train[rows].shape, np.int32),
        "params": ((param_rows, size), np.float32),
        # (state vector, row, P): a state vector's rows are contiguous, so averaging it
        # across workers is the same reduction as averaging the parameters.
        "opt_state": ((n_state, state_rows, size), np.float32),
        "grads": ((workers, size), np.float32),
        "progress": ((workers, 8), np.int64),  # steps done per worker (one cache line)
    }
    if hierarchical:
        averaged = 1 + (n_state if combiner.schedule.average_state else 0)
        arrays["node_barrier"] = (barrier_shape(workers + 1), np.int64)
        arrays["node_means"] = ((averaged, size), np.float32)
    return arrays


def _fill_arena(arena, data, rows, model, combiner, seed, first_worker, keep_copy) -> None:
    """The training rows (written once; workers read their shard in place) and each
    parameter row's initialisation."""
    arena["x_train"][:] = data.x_train[rows]
    arena["y_train"][:] = data.y_train[rows]
    if not keep_copy:
        # From here on the coordinator reads the training set from the arena too, and
        # drops its private copies: the dataset is held once, not 1 + N times.
        # (Fresh empty arrays: even a zero-length view would keep its base alive.)
        data.x_train, data.y_train = arena["x_train"], arena["y_train"]
        data.dataset = dataclasses.replace(
            data.dataset,
            x_train=np.empty((0, data.dataset.n_features), np.float32),
            y_train=np.empty(0, np.int32),
        )
    for row in range(arena["params"].shape[0]):
        model.init(init_seed(seed, first_worker + row, combiner.init), out=arena["params"][row])


def _resume(cfg, arena, digest: str, total_steps: int) -> int:
    """Load ``resume=PATH`` into the arena; the step to start from (0 without one)."""
    if not cfg.resume:
        return 0
    state = read_checkpoint(cfg.resume, digest, arena["params"].shape, arena["opt_state"].shape)
    arena["params"][:], arena["opt_state"][:] = state["params"], state["opt_state"]
    if state["step"] >= total_steps:
        raise ConfigError(
            f"resume={cfg.resume}: the checkpoint is at step {state['step']}, the run "
            f"has {total_steps} steps; ask for more steps"
        )
    log.info("resuming from %s at step %d", cfg.resume, state["step"])
    return state["step"]


def _mpi_world(cfg, combiner: Combiner):
    """MPI.COMM_WORLD under dist=mpi (None for a single machine), with what it cannot do."""
    if enum_value(cfg.dist) == "local":
        return None
    if combiner.sync is Sync.ASYNC:
        raise ConfigError(
            f"{combiner.name} shares one vector in one machine's memory; use dist=local"
        )
    if cfg.checkpoint.every is not None or cfg.resume:
        raise ConfigError("checkpoint/resume is not supported with dist=mpi yet")
    return world()


def _mpi_max():
    from mpi4py import MPI

    return MPI.MAX


def _pool_options(cfg, backend: str) -> dict:
    """How the pool starts its workers: threads, CPUs, and the backend's environment
    (set before the worker's imports)."""
    threads = int(cfg.backend.threads)
    env = {}
    if backend == "jax":
        from fastdist.models.kernels.jax_mlp import configure_jax_threads

        env = configure_jax_threads(threads, _backend_options(cfg)["compilation_cache"])
    return {"threads": threads, "extra_env": env, "pin_cpus": bool(cfg.backend.pin_cpus)}


def _backend_options(cfg) -> dict:
    cache = cfg.backend.compilation_cache
    return {"compilation_cache": None if cache is None else str(cache)}
