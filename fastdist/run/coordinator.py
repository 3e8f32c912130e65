"""The coordinator: split, spawn, train, combine, evaluate, clean up.

``train(cfg)`` is the whole recipe for one run; the CLI, the tests and the benchmarks
all go through it. The coordinator never trains: it fills the arena, supervises the
workers, and evaluates the combined model once they are done.
"""

from __future__ import annotations

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
from fastdist.run.combine import combine, describe_model, gather_training, run_metrics
from fastdist.run.config import checkpointing, enum_value, validate
from fastdist.run.distributed import world
from fastdist.run.preparation import init_seed, plan_steps, prepare_data
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
    place = Placement.of(comm, int(cfg.workers))

    # 1. Split: shuffle once, cut the shards; the model follows the data's shape.
    # The rows go straight into shared memory (or stay in their .npy files), shuffled
    # by index; data.store owns them until the run ends.
    data = prepare_data(cfg, place.total_workers, fraction, shared=True)
    try:
        model = build_model(cfg.model, data.dataset.input_shape, data.dataset.n_classes)
        if combiner.check_model is not None:
            combiner.check_model(model)
        batch, total_steps = plan_steps(cfg, data.n_train, place.total_workers)
        backend = enum_value(cfg.backend.name)
        model.kernel(backend, 1)  # an unknown or uninstalled backend fails here, not in a worker
        rows, shards = place.node_rows(data.shards)
        digest = config_hash(cfg)
        every, checkpoint_path = checkpointing(cfg)
    except BaseException:
        data.release()
        raise

    # 2. One shared-memory arena: parameters, optimizer state, gradients.
    arrays = _arena_arrays(model, optimizer, combiner, place)
    with data.store, SharedArena.create(arrays) as arena:
        _fill_arena(arena, model, combiner, int(cfg.seed), place)
        spec = WorkerSpec(
            arena=arena.spec,
            data=data.rows_spec(rows),
            model=model,
            backend=backend,
            schedule=combiner.schedule,
            shards=shards,
            batch_size=batch,
            total_steps=total_steps,
            optimizer=optimizer,
            seed=int(cfg.seed),
            threads=int(cfg.backend.threads),
            backend_options=_backend_options(cfg),
            start_step=_resume(cfg, arena, digest, total_steps),
            checkpoint_every=every,
            checkpoint_path=checkpoint_path,
            config_hash=digest,
            hierarchical=comm is not None,
            rank_offset=place.first_worker,
        )
        _announce(combiner, data.dataset.name, place, spec)
        # 3. Spawn the workers and train, under the failure policy.
        spawned = time.monotonic()
        progress = EpochLog(place.workers, quiet=place.node != 0)
        done, last_spec, failures = supervise(
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
        trained = gather_training(done, spawned, arena["params"], comm, combiner.shares_parameters)
        if trained is None:  # dist=mpi, rank > 0: rank 0 reports for the whole job
            data.release()
            return RunResult({}, arena["params"].copy(), model, np.zeros(0), fraction)
        # 4-5. Combine and evaluate, inside the arena's lifetime: data-dependent
        # combiners read the shards from it.
        metrics = combine(
            combiner,
            trained.worker_params,
            model,
            data,
            trained.samples_seen,
            int(cfg.seed),
            bool(cfg.diagnostics),
        )
        data.release()  # drop the views and unlink the shared rows
    # 6. Cleaned up: the pool is gone, the arena unlinked (also on any error above).
    metrics.update(
        run_metrics(cfg, trained, place, data, model, optimizer, combiner, spec, progress)
    )
    metrics["failures"] = failures
    log.info(
        "test_accuracy %.4f  test_loss %.4f  %.0f samples/s over %.2f s",
        *(metrics[k] for k in ("test_accuracy", "test_loss", "samples_per_second")),
        trained.train_seconds,
    )
    return RunResult(
        metrics, trained.worker_params, model, trained.samples_seen, fraction, combiner.sync.value
    )


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
        """The training rows this node's arena holds (all of them on one machine) and
        its workers' shards relative to them."""
        mine = shards[self.first_worker : self.first_worker + self.workers]
        start = mine[0][0] if self.mpi else 0
        rows = slice(start, mine[-1][1] if self.mpi else None)
        return rows, tuple((lo - start, hi - start) for lo, hi in mine)


def _announce(combiner: Combiner, dataset: str, place: Placement, spec: WorkerSpec) -> None:
    log.info(
        "training %s on %s: %s%d workers x batch %d, %d steps, backend %s, model %s",
        combiner.name,
        dataset,
        f"{place.nodes} nodes x " if place.mpi else "",
        place.workers,
        spec.batch_size,
        spec.total_steps,
        spec.backend,
        describe_model(spec.model),
    )


def _arena_arrays(
    model: Model,
    optimizer: Optimizer,
    combiner: Combiner,
    place: Placement,
) -> dict:
    """Name -> (shape, dtype) of everything the workers share."""
    workers, size = place.workers, model.layout.size
    param_rows = 1 if combiner.shares_parameters else workers
    state_rows = 1 if combiner.shares_state else workers
    n_state = len(optimizer.state_names)
    arrays = {
        "params": ((param_rows, size), np.float32),
        # (state vector, row, P): a state vector's rows are contiguous, so averaging it
        # across workers is the same reduction as averaging the parameters.
        "opt_state": ((n_state, state_rows, size), np.float32),
        "grads": ((workers, size), np.float32),
        "progress": ((workers, 8), np.int64),  # steps done per worker (one cache line)
    }
    if place.mpi:
        averaged = 1 + (n_state if combiner.schedule.average_state else 0)
        arrays["node_barrier"] = (barrier_shape(workers + 1), np.int64)
        arrays["node_means"] = ((averaged, size), np.float32)
    return arrays


def _fill_arena(arena, model, combiner, seed: int, place: Placement) -> None:
    """Each parameter row's initialisation (the training rows live in ``data.store``)."""
    for row in range(arena["params"].shape[0]):
        worker = place.first_worker + row
        model.init(init_seed(seed, worker, combiner.init), out=arena["params"][row])


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
