"""The coordinator: split, spawn, train, combine, evaluate, clean up.

``train(cfg)`` is the whole recipe for one run; the CLI, the tests and the benchmarks
all go through it. The coordinator never trains: it fills the arena, supervises the
workers, and evaluates the combined model once they are done.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from fastdist.combiners.base import CombinedModel, Combiner, Sync
from fastdist.combiners.evaluate import predict_proba, preload_host_kernel
from fastdist.engine.barrier import barrier_shape, check_memory_order
from fastdist.engine.cleanup import remove_stale_segments
from fastdist.engine.memory import check_memory_plan
from fastdist.engine.shm import SharedArena, arena_bytes
from fastdist.errors import ConfigError
from fastdist.models.base import Model
from fastdist.optim.base import Optimizer
from fastdist.optim.schedules import LearningRate, lr_scale
from fastdist.run.accounting import eval_arrays, run_accounting
from fastdist.run.checkpoint import check_checkpoint_path, config_hash, read_checkpoint
from fastdist.run.combine import combine_model, describe_model, gather_training, run_metrics
from fastdist.run.config import checkpointing, enum_value, validate
from fastdist.run.distributed import world
from fastdist.run.pool_cache import reuse_requested
from fastdist.run.preparation import PreparedData, init_seed, plan_steps, prepare_data
from fastdist.run.preparation import validation_fraction as held_out_fraction
from fastdist.run.records import build_combiner, build_model, build_optimizer, build_schedule
from fastdist.run.rounds import ROUND_STATE, check_rounds, round_arrays
from fastdist.run.supervision import check_failure_policy, supervise
from fastdist.run.watch import history_plan, watch
from fastdist.run.worker import WorkerSpec

__all__ = ["RunResult", "train"]

log = logging.getLogger("fastdist")


@dataclass
class RunResult:
    """What a run produced: the metrics written to metrics.json, the final per-worker
    parameters (for saving and re-combining), the combined model, and the history rows
    (those of history.csv)."""

    metrics: dict
    worker_params: np.ndarray
    model: Model
    samples_seen: np.ndarray
    validation_fraction: float = 0.0
    sync: str = "none"
    combined: CombinedModel | None = None
    history: list[dict] = field(default_factory=list)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of the combined model, shape (n, classes), for rows
        ``x`` preprocessed like the dataset's (e.g. ``load_dataset(...).x_test``)."""
        if self.combined is None:
            raise ValueError("this result holds no combined model (an MPI rank > 0)")
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
        return predict_proba(self.combined, self.model, x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The combined model's predicted class for each row of ``x``."""
        return self.predict_proba(x).argmax(axis=1)


def train(cfg) -> RunResult:
    """Run one training job described by a composed config (see conf/config.yaml)."""
    validate(cfg)
    check_memory_order()
    for name in remove_stale_segments():
        log.warning("removed /dev/shm/%s, left by a run that was killed", name)
    combiner, optimizer = build_combiner(cfg.combiner), build_optimizer(cfg.optimizer)
    lr_schedule = build_schedule(cfg.schedule)
    fraction = held_out_fraction(cfg, combiner)
    check_failure_policy(enum_value(cfg.on_worker_failure), combiner, enum_value(cfg.dist))
    comm = _mpi_world(cfg, combiner)
    check_rounds(combiner, optimizer, enum_value(cfg.dist))
    place = Placement.of(comm, int(cfg.workers))
    saving = _check_files(cfg)  # checkpoint path, resume file, memory: before start-up

    # 1. Split: shuffle once, cut the shards; the model follows the data's shape.
    data = prepare_data(cfg, place.total_workers, fraction)
    model = build_model(cfg.model, data.dataset.input_shape, data.dataset.n_classes)
    if combiner.check_model is not None:
        combiner.check_model(model)
    plan = _plan(cfg, data, place, optimizer, lr_schedule)

    # 2. One shared-memory arena: training rows, parameters, optimizer state, gradients.
    arrays = _arena_arrays(data, model, optimizer, combiner, place, plan)
    check_memory_plan(arena_bytes(arrays), what="this run's arena")
    backend = enum_value(cfg.backend.name)
    model.kernel(backend, 1)  # an unknown or uninstalled backend fails here, not in a worker
    with SharedArena.create(arrays) as arena:
        _fill_arena(arena, data, plan.rows, model, combiner, int(cfg.seed), place)
        start_step = _resume(cfg, arena, saving.resumed, plan.total_steps)
        spec = _worker_spec(cfg, arena, model, optimizer, combiner, backend, place, plan)
        spec = dataclasses.replace(spec, start_step=start_step, **saving.spec_fields)
        _announce(combiner, data.dataset.name, place, spec)
        # 3. Spawn the workers and train, under the failure policy.
        spawned = time.monotonic()
        progress = watch(
            cfg,
            place=place,
            spec=spec,
            model=model,
            optimizer=optimizer,
            combiner=combiner,
            data=data,
            arena=arena,
            steps_per_epoch=plan.steps_per_epoch,
        )
        done, failures = _supervised(cfg, arena, spec, progress, comm, saving, model)
        trained = gather_training(done, spawned, arena["params"], comm, combiner.shares_parameters)
        if trained is None:  # dist=mpi, rank > 0: rank 0 reports for the whole job
            data.x_train = data.y_train = None
            return RunResult({}, arena["params"].copy(), model, np.zeros(0), fraction)
        # 4-5. Combine and evaluate, inside the arena's lifetime: data-dependent
        # combiners read the shards from it.
        metrics, combined = combine_model(
            combiner,
            trained.worker_params,
            model,
            data,
            trained.samples_seen,
            int(cfg.seed),
            bool(cfg.diagnostics),
        )
        metrics.update(run_accounting(cfg, arena, combiner, optimizer, model, data, spec, done))
        data.x_train = data.y_train = None  # drop the views before the arena closes
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
    history = progress.history.rows if progress.history is not None else []
    return RunResult(
        metrics,
        trained.worker_params,
        model,
        trained.samples_seen,
        fraction,
        combiner.sync.value,
        combined,
        history,
    )


@dataclass(frozen=True)
class _Saving:
    """Checkpointing settings, checked before start-up, and the checkpoint to resume."""

    digest: str
    every: int | None
    path: str | None
    resumed: dict | None

    @property
    def spec_fields(self) -> dict:
        return {"checkpoint_every": self.every, "checkpoint_path": self.path}


def _check_files(cfg) -> _Saving:
    """Everything that can be checked before start-up is: the checkpoint's file, the
    file to resume from (its shapes once the model is known), the data's memory."""
    digest = config_hash(cfg)
    every, path = checkpointing(cfg)
    if path:
        check_checkpoint_path(path)
    resumed = read_checkpoint(cfg.resume, digest) if cfg.resume else None
    _plan_data_memory(cfg)
    return _Saving(digest, every, path, resumed)


@dataclass(frozen=True)
class _Plan:
    """The run's shape once the data are known."""

    batch: int
    total_steps: int
    rates: LearningRate
    rows: slice
    shards: tuple
    steps_per_epoch: int
    history_every: int
    eval_every: int  # history: steps between scores of the combined model (0 = never)
    sync_eval_every: int | None  # accounting: snapshots after syncs (None = never)


def _plan(cfg, data: PreparedData, place: Placement, optimizer, lr_schedule) -> _Plan:
    smallest = min(hi - lo for lo, hi in data.shards)
    batch, total_steps = plan_steps(cfg, len(data.y_train), place.total_workers, smallest)
    # One pure function of the global step: every worker computes the same rate.
    scale = lr_scale(enum_value(cfg.lr_scaling), place.total_workers)
    rates = LearningRate(optimizer.lr, scale, lr_schedule, total_steps)
    rows, shards = place.node_rows(data.shards)
    steps_per_epoch, history_every, eval_every = history_plan(cfg, shards, batch, place.mpi)
    sync_eval_every = None if cfg.eval_every is None else int(cfg.eval_every)
    return _Plan(
        batch,
        total_steps,
        rates,
        rows,
        shards,
        steps_per_epoch,
        history_every,
        eval_every,
        sync_eval_every,
    )


def _worker_spec(cfg, arena, model, optimizer, combiner, backend, place, plan) -> WorkerSpec:
    return WorkerSpec(
        arena=arena.spec,
        model=model,
        backend=backend,
        schedule=combiner.schedule,
        shards=plan.shards,
        batch_size=plan.batch,
        total_steps=plan.total_steps,
        optimizer=optimizer,
        rates=plan.rates,
        seed=int(cfg.seed),
        threads=int(cfg.backend.threads),
        backend_options=_backend_options(cfg),
        config_hash=config_hash(cfg),
        hierarchical=place.mpi,
        rank_offset=place.first_worker,
        history_every=plan.history_every,
        sync_eval_every=plan.sync_eval_every,
        eval_every=plan.eval_every,
    )


def _supervised(cfg, arena, spec: WorkerSpec, progress, comm, saving: _Saving, model):
    """Step 3: the pool trains under the failure policy while ``progress`` watches."""
    progress.start(spec.start_step)
    preload_host_kernel(model)  # for the final evaluation, while the workers start
    try:
        done, _, failures = supervise(
            arena,
            spec,
            progress,
            policy=enum_value(cfg.on_worker_failure),
            max_respawns=int(cfg.max_respawns),
            pool_options=_pool_options(cfg, spec.backend),
            comm=comm,
            checkpoint_path=saving.path,
            digest=saving.digest,
            reuse=reuse_requested(cfg),
        )
    except BaseException:
        progress.close(complete=False)  # the rows so far stay in history.csv
        raise
    progress.close()  # scores the held snapshots (run/history.py)
    return done, failures


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
    data: PreparedData,
    model: Model,
    optimizer: Optimizer,
    combiner: Combiner,
    place: Placement,
    plan: _Plan,
) -> dict:
    """Name -> (shape, dtype) of everything the workers share."""
    workers, size, rows = place.workers, model.layout.size, plan.rows
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
    if optimizer.clip_norm is not None:
        # Each worker's partial sum of squares of the averaged gradient (one cache line).
        arrays["grad_norm_parts"] = ((workers, 8), np.float64)
    if place.mpi:
        averaged = 1 + (n_state if combiner.schedule.average_state else 0)
        arrays["node_barrier"] = (barrier_shape(workers + 1), np.int64)
        arrays["node_means"] = ((averaged, size), np.float32)
    if plan.eval_every:  # run/history.py: the rows as they stood at an evaluation step
        arrays["snapshots"] = arrays["params"]
    arrays.update(round_arrays(combiner, workers, size))
    arrays.update(eval_arrays(plan.sync_eval_every, plan.total_steps, size, combiner.sync))
    return arrays


def _fill_arena(arena, data, rows, model, combiner, seed: int, place: Placement) -> None:
    """The training rows (written once; workers read their shard in place) and each
    parameter row's initialisation."""
    arena["x_train"][:] = data.x_train[rows]
    arena["y_train"][:] = data.y_train[rows]
    if not place.mpi:
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
        worker = place.first_worker + row
        model.init(init_seed(seed, worker, combiner.init), out=arena["params"][row])
    if "anchor" in arena:  # local-update rounds: the server model starts where all do
        arena["anchor"][:] = arena["params"][0]


def _plan_data_memory(cfg) -> None:
    """Before generating data: the generated set, its shuffled copy and the arena's
    copy of the training rows must fit (files are bounded by the disk already)."""
    from fastdist.data.datasets import expected_bytes

    data_bytes = expected_bytes(cfg.dataset)
    if data_bytes is not None:
        train_share = (
            data_bytes
            * int(cfg.dataset.n_train)
            // (int(cfg.dataset.n_train) + int(cfg.dataset.n_test))
        )
        check_memory_plan(train_share, 2 * data_bytes, what=f"dataset={cfg.dataset.name}")


def _resume(cfg, arena, state: dict | None, total_steps: int) -> int:
    """Put the checkpoint read at start-up into the arena; the step to start from (0
    without one)."""
    if state is None:
        return 0
    if (state["params"].shape, state["opt_state"].shape) != (
        arena["params"].shape,
        arena["opt_state"].shape,
    ):
        raise ConfigError(f"resume={cfg.resume}: the checkpoint's shapes do not match this model")
    for name in (name for name in ROUND_STATE if name in arena):
        kept = state["extra"].get(name)
        if kept is None or kept.shape != arena[name].shape:
            raise ConfigError(f"resume={cfg.resume}: the checkpoint lacks this combiner's {name}")
        arena[name][:] = kept
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
    return {
        "threads": threads,
        "extra_env": env,
        "pin_cpus": bool(cfg.backend.pin_cpus),
        "worker_timeout": cfg.get("worker_timeout"),
    }


def _backend_options(cfg) -> dict:
    cache = cfg.backend.compilation_cache
    return {"compilation_cache": None if cache is None else str(cache)}
