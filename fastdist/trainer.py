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

from fastdist.barrier import barrier_shape
from fastdist.checkpoint import config_hash, read_checkpoint
from fastdist.cleanup import remove_stale_segments
from fastdist.combiners import CombinedModel, Combiner, FinalizeInputs, Sync
from fastdist.data import Dataset, load_dataset, shard_bounds
from fastdist.diagnostics import worker_diagnostics
from fastdist.distributed import NodeCoordinator, gather_rows, node_sync_steps, world
from fastdist.errors import ConfigError, WorkerError
from fastdist.evaluate import evaluate
from fastdist.kernels import get_kernel
from fastdist.model import ParamLayout, init_params
from fastdist.optim import SGD
from fastdist.pool import WorkerPool
from fastdist.shm import SharedArena
from fastdist.worker import WorkerSpec, train_worker

__all__ = ["RunResult", "PreparedData", "train", "build_combiner", "prepare_data", "combine"]

log = logging.getLogger("fastdist")

_DEFAULT_VALIDATION = 0.1


@dataclass
class RunResult:
    """What a run produced: the metrics written to metrics.json, and the final
    per-worker parameters (for saving and re-combining)."""

    metrics: dict
    worker_params: np.ndarray
    layout: ParamLayout
    samples_seen: np.ndarray
    validation_fraction: float = 0.0
    sync: str = "none"


@dataclass
class PreparedData:
    """The training set as the workers see it: shuffled once by the seed, minus the
    validation split, cut into equal contiguous shards."""

    dataset: Dataset
    x_train: np.ndarray
    y_train: np.ndarray
    validation: tuple[np.ndarray, np.ndarray] | None
    shards: list[tuple[int, int]]

    def shard_arrays(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        return tuple((self.x_train[lo:hi], self.y_train[lo:hi]) for lo, hi in self.shards)


def build_combiner(node) -> Combiner:
    """Instantiate the combiner a config node names through its ``_target_``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        combiner = instantiate(node)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"bad combiner settings: {str(cause).splitlines()[0]}") from None
    if not isinstance(combiner, Combiner):
        raise ConfigError(f"combiner._target_ must build a Combiner, got {type(combiner).__name__}")
    return combiner


def validation_fraction(cfg, combiner: Combiner) -> float:
    fraction = float(cfg.get("validation_fraction", 0.0) or 0.0)
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0 and combiner.needs_validation:
        log.info(
            "%s selects on held-out data: validation_fraction=%.1f of the training set",
            combiner.name,
            _DEFAULT_VALIDATION,
        )
        fraction = _DEFAULT_VALIDATION
    return fraction


def prepare_data(cfg, workers: int, fraction: float) -> PreparedData:
    dataset = load_dataset(cfg.dataset)
    # Shuffle once, by the seed; the validation split is the head of the shuffled set,
    # shards are contiguous slices of the rest.
    order = np.random.default_rng(int(cfg.seed)).permutation(len(dataset.y_train))
    n_val = int(round(len(order) * fraction))
    if fraction > 0 and n_val == 0:
        raise ConfigError(f"validation_fraction={fraction} leaves no validation rows")
    x, y = dataset.x_train[order], dataset.y_train[order]
    # Copies, not views: a view would keep the whole shuffled block alive after the
    # training rows have moved into shared memory.
    validation = (x[:n_val].copy(), y[:n_val].copy()) if n_val else None
    x, y = x[n_val:], y[n_val:]
    return PreparedData(dataset, x, y, validation, shard_bounds(len(y), workers))


def _check(cfg, n_train: int, workers: int) -> tuple[int, int]:
    """(batch, total steps), once the data are known: a batch must fit in a shard."""
    batch = int(cfg.batch_size)
    shard = n_train // workers
    if batch > shard:
        raise ConfigError(
            f"batch_size={batch} is larger than a shard ({shard} rows = "
            f"{n_train} training rows / {workers} workers)"
        )
    steps_per_epoch = shard // batch
    if cfg.get("steps") is not None:
        return batch, int(cfg.steps)
    return batch, int(cfg.epochs) * steps_per_epoch


class _Progress:
    """Receives workers' control messages: thread pools at start, one line per epoch
    once every worker has reported that epoch."""

    def __init__(self, workers: int, quiet: bool = False) -> None:
        self.workers = workers
        self.quiet = quiet
        self.blas_threads: dict[int, list] = {}
        self.cpus: dict[int, list[int]] = {}
        self._pending: dict[int, list[dict]] = {}

    def __call__(self, kind: str, rank: int, payload) -> None:
        if kind == "ready":
            self.blas_threads[rank] = payload["threads"]
            self.cpus[rank] = payload["cpus"]
        elif kind == "epoch":
            self._epoch(payload)

    def _epoch(self, payload: dict) -> None:
        reports = self._pending.setdefault(payload["epoch"], [])
        reports.append(payload)
        if len(reports) < self.workers:
            return
        del self._pending[payload["epoch"]]
        if self.quiet:
            return
        seen = sum(r["seen"] for r in reports)
        log.info(
            "epoch %d  loss %.4f  train_acc %.4f  samples/s %.0f",
            payload["epoch"] + 1,
            sum(r["loss_sum"] for r in reports) / max(seen, 1),
            sum(r["correct"] for r in reports) / max(seen, 1),
            seen / max(max(r["seconds"] for r in reports), 1e-9),
        )

    def reset(self) -> None:
        """Forget partial epochs (the workers restart from a checkpoint)."""
        self._pending.clear()

    @property
    def max_threads(self) -> int:
        """The largest thread pool any worker had loaded (1 when pinning worked)."""
        counts = [n for libs in self.blas_threads.values() for _, n in libs]
        return max(counts, default=0)


def model_layout(cfg, dataset: Dataset) -> ParamLayout:
    hidden = tuple(int(h) for h in cfg.model.hidden)
    if any(h < 1 for h in hidden):
        raise ConfigError(f"model.hidden sizes must be >= 1, got {list(hidden)}")
    return ParamLayout((dataset.n_features, *hidden, dataset.n_classes))


def combine(
    combiner: Combiner,
    worker_params: np.ndarray,
    layout: ParamLayout,
    data: PreparedData,
    samples_seen: np.ndarray,
    seed: int,
    diagnostics: bool = True,
) -> dict:
    """Finalize ``combiner`` on trained worker states and score it on the test set.

    Used at the end of training and by ``fastdist-combine`` on saved states, so an
    ablation over combiners differs in nothing else.
    """
    if combiner.needs_validation and data.validation is None:
        raise ConfigError(f"{combiner.name} needs a validation split: set validation_fraction")
    inputs = FinalizeInputs(
        worker_params, layout, samples_seen, data.shard_arrays(), data.validation, seed
    )
    combined: CombinedModel = combiner.finalize(inputs)
    x_test, y_test = data.dataset.x_test, data.dataset.y_test
    scores = evaluate(combined, layout, x_test, y_test)
    metrics = {
        "test_accuracy": scores["accuracy"],
        "test_loss": scores["loss"],
        "combiner": combiner.name,
        "members": len(combined.members),
        **{f"combiner_{k}": v for k, v in combined.info.items()},
    }
    independent_rows = worker_params.shape[0] > 1
    if diagnostics and independent_rows:
        diag = worker_diagnostics(layout, worker_params, x_test, y_test)
        metrics.update(diag)
        if len(combined.members) > 1:
            metrics["ensemble_gain_over_best_member"] = (
                scores["accuracy"] - diag["best_member_test_accuracy"]
            )
    return metrics


def validate(cfg) -> None:
    """Check every number before any work starts, so bad input costs nothing and reads
    as one line."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(int(cfg.workers) >= 1, f"workers must be >= 1, got {cfg.workers}")
    need(int(cfg.seed) >= 0, f"seed must be >= 0, got {cfg.seed}")
    need(int(cfg.batch_size) >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    need(int(cfg.epochs) >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    need(cfg.steps is None or int(cfg.steps) >= 1, f"steps must be >= 1, got {cfg.steps}")
    need(int(cfg.backend.threads) >= 1, f"backend.threads must be >= 1, got {cfg.backend.threads}")
    hidden = list(cfg.model.hidden)
    need(all(int(h) >= 1 for h in hidden), f"model.hidden sizes must be >= 1, got {hidden}")
    data = cfg.dataset
    if data.name == "synthetic":
        need(int(data.n_train) >= 1, f"dataset.n_train must be >= 1, got {data.n_train}")
        need(int(data.n_test) >= 1, f"dataset.n_test must be >= 1, got {data.n_test}")
        need(int(data.n_features) >= 1, f"dataset.n_features must be >= 1, got {data.n_features}")
        need(int(data.n_classes) >= 2, f"dataset.n_classes must be >= 2, got {data.n_classes}")
    need(int(data.seed) >= 0, f"dataset.seed must be >= 0, got {data.seed}")
    need(
        0.0 < float(data.test_fraction) < 1.0,
        f"dataset.test_fraction must be in (0, 1), got {data.test_fraction}",
    )
    need(int(data.split_seed) >= 0, f"dataset.split_seed must be >= 0, got {data.split_seed}")
    SGD(**{k: float(v) for k, v in cfg.optimizer.items() if k != "name"})
    _checkpointing(cfg)


def train(cfg) -> RunResult:
    """Run one training job described by a composed config (see conf/config.yaml)."""
    validate(cfg)
    for name in remove_stale_segments():
        log.warning("removed /dev/shm/%s, left by a run that was killed", name)
    combiner = build_combiner(cfg.combiner)
    fraction = validation_fraction(cfg, combiner)
    _check_failure_policy(cfg, combiner)
    comm = _mpi_world(cfg, combiner)
    n_nodes, node = (comm.Get_size(), comm.Get_rank()) if comm else (1, 0)
    workers = int(cfg.workers)  # per node
    data = prepare_data(cfg, workers * n_nodes, fraction)
    batch, total_steps = _check(cfg, len(data.y_train), workers * n_nodes)
    optimizer = SGD(**{k: float(v) for k, v in cfg.optimizer.items() if k != "name"})
    layout = model_layout(cfg, data.dataset)
    seed = int(cfg.seed)
    backend = str(cfg.backend.name)
    get_kernel(backend)  # an unknown or uninstalled backend fails here, before spawning
    threads = int(cfg.backend.threads)

    # This node's workers are global workers node*W .. node*W + W-1; the arena holds
    # only their rows (all rows when there is one node).
    node_shards = data.shards[node * workers : (node + 1) * workers]
    first = node_shards[0][0]
    rows = slice(first if comm else 0, node_shards[-1][1] if comm else len(data.y_train))
    local_shards = tuple((lo - rows.start, hi - rows.start) for lo, hi in node_shards)

    digest = config_hash(cfg)
    every, checkpoint_path = _checkpointing(cfg)
    param_rows = 1 if combiner.shares_parameters else workers
    momentum_rows = 1 if combiner.shares_momentum else workers
    arrays = {
        "x_train": (data.x_train[rows].shape, np.float32),
        "y_train": (data.y_train[rows].shape, np.int32),
        "params": ((param_rows, layout.size), np.float32),
        "momentum": ((momentum_rows, layout.size), np.float32),
        "grads": ((workers, layout.size), np.float32),
        "progress": ((workers, 8), np.int64),  # steps done per worker (one cache line)
    }
    if comm:
        arrays["node_barrier"] = (barrier_shape(workers + 1), np.int64)
        arrays["node_mean"] = ((layout.size,), np.float32)
        arrays["node_mean_momentum"] = ((layout.size,), np.float32)
    with SharedArena.create(arrays) as arena:
        # The training set is written into the arena once; workers read their shard
        # of it in place.
        arena["x_train"][:] = data.x_train[rows]
        arena["y_train"][:] = data.y_train[rows]
        if not comm:
            # From here on the coordinator reads the training set from the arena too,
            # and drops its private copies: the dataset is held once, not 1 + N times.
            # (Fresh empty arrays: even a zero-length view would keep its base alive.)
            data.x_train, data.y_train = arena["x_train"], arena["y_train"]
            data.dataset = dataclasses.replace(
                data.dataset,
                x_train=np.empty((0, data.dataset.n_features), np.float32),
                y_train=np.empty(0, np.int32),
            )
        for row in range(param_rows):
            global_row = node * workers + row
            init_params(
                layout, init_seed(seed, global_row, combiner.init), out=arena["params"][row]
            )
        start_step = 0
        if cfg.get("resume"):
            state = read_checkpoint(
                cfg.resume, digest, arena["params"].shape, arena["momentum"].shape
            )
            arena["params"][:], arena["momentum"][:] = state["params"], state["momentum"]
            start_step = state["step"]
            if start_step >= total_steps:
                raise ConfigError(
                    f"resume={cfg.resume}: the checkpoint is at step {start_step}, the run "
                    f"has {total_steps} steps; ask for more steps"
                )
            log.info("resuming from %s at step %d", cfg.resume, start_step)

        average_momentum = bool(combiner.options.get("average_momentum", False))
        spec = WorkerSpec(
            arena=arena.spec,
            sizes=layout.sizes,
            backend=backend,
            sync=combiner.sync,
            period=combiner.period,
            average_momentum=average_momentum,
            shards=local_shards,
            batch_size=batch,
            total_steps=total_steps,
            optimizer=optimizer,
            seed=seed,
            threads=threads,
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
            "-".join(map(str, layout.sizes)),
        )
        spawned = time.monotonic()
        progress = _Progress(workers, quiet=node != 0)
        policy = str(cfg.get("on_worker_failure", "fail"))
        done, spec, failures = _run_workers(
            cfg, arena, spec, progress, comm, combiner, checkpoint_path, digest
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
            if node != 0:
                data.x_train = data.y_train = None
                return RunResult(
                    {}, arena["params"].copy(), layout, np.zeros(0), fraction, combiner.sync.value
                )
        # Combined inside the arena's lifetime: data-dependent combiners read the shards
        # from it.
        metrics = combine(
            combiner,
            worker_params,
            layout,
            data,
            samples_seen,
            seed,
            diagnostics=bool(cfg.get("diagnostics", True)),
        )
        data.x_train = data.y_train = None  # drop the views before the arena closes

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
            "model": list(layout.sizes),
            "n_params": layout.size,
            "init": combiner.init,
            "deterministic": combiner.deterministic,
            "validation_rows": 0 if data.validation is None else len(data.validation[1]),
            "worker_blas_threads": progress.max_threads,
            "worker_cpu_affinity": [progress.cpus.get(r) for r in range(workers)],
            "resumed_from_step": start_step,
            "recompilations_after_warmup": max(d["recompilations"] for d in finished),
            "on_worker_failure": policy,
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
    return RunResult(metrics, worker_params, layout, samples_seen, fraction, combiner.sync.value)


def _run_workers(cfg, arena, spec: WorkerSpec, progress, comm, combiner, checkpoint_path, digest):
    """Start the pool and supervise it to the end, applying ``on_worker_failure``.

    Returns the workers' final reports, the spec of the last attempt (its start step
    moves when workers are respawned from a checkpoint) and the failure events.
    """
    workers, threads = len(spec.shards), spec.threads
    policy = str(cfg.get("on_worker_failure", "fail"))
    initial = (arena["params"].copy(), arena["momentum"].copy(), spec.start_step)
    failures: list[dict] = []
    while True:
        pool = WorkerPool(
            workers,
            train_worker,
            (spec,),
            threads=threads,
            extra_env=_backend_env(spec.backend, threads, spec.backend_options),
            pin_cpus=bool(cfg.backend.get("pin_cpus", False)),
        )
        try:
            with pool:
                if comm:
                    syncs = node_sync_steps(
                        spec.sync, spec.period, spec.start_step, spec.total_steps
                    )
                    coordinator = NodeCoordinator(comm, arena, workers, spec.average_momentum)
                    done = coordinator.run(pool, progress, syncs)
                else:
                    done = pool.join(progress, tolerate_failures=policy == "continue")
            break
        except WorkerError as exc:
            if policy != "respawn" or len(failures) >= int(cfg.max_respawns):
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
                int(cfg.max_respawns),
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


def init_seed(seed: int, worker: int, init: str) -> int:
    """The initialisation seed of a worker: the run's seed when the start is shared;
    otherwise one derived from (seed, worker), so that no two workers of any two seeds
    share an initialisation (seed + worker would: worker 1 of seed 0 = worker 0 of 1)."""
    if init != "independent":
        return seed
    return int(np.random.SeedSequence([seed, worker]).generate_state(1)[0])


def _restore(arena, checkpoint_path: str | None, digest: str, initial: tuple) -> int:
    """Put the last checkpoint (or the run's starting state) back into the arena."""
    import os

    if checkpoint_path and os.path.exists(checkpoint_path):
        state = read_checkpoint(
            checkpoint_path, digest, arena["params"].shape, arena["momentum"].shape
        )
        arena["params"][:], arena["momentum"][:] = state["params"], state["momentum"]
        return state["step"]
    params, momentum, step = initial
    arena["params"][:], arena["momentum"][:] = params, momentum
    return step


def _check_failure_policy(cfg, combiner: Combiner) -> None:
    policy = str(cfg.get("on_worker_failure", "fail"))
    if policy not in ("fail", "continue", "respawn"):
        raise ConfigError(
            f"on_worker_failure must be 'fail', 'continue' or 'respawn', got {policy!r}"
        )
    if policy == "continue" and combiner.sync not in (Sync.NONE, Sync.ASYNC):
        raise ConfigError(
            f"on_worker_failure=continue cannot keep {combiner.name}'s synchronous steps "
            "going without a worker; use on_worker_failure=respawn"
        )
    if policy != "fail" and str(cfg.get("dist", "local")) == "mpi":
        raise ConfigError("with dist=mpi a failed worker ends the job (on_worker_failure=fail)")
    if int(cfg.get("max_respawns", 3)) < 0:
        raise ConfigError(f"max_respawns must be >= 0, got {cfg.max_respawns}")


def _mpi_world(cfg, combiner: Combiner):
    """MPI.COMM_WORLD under dist=mpi (None for a single machine), with what it cannot do."""
    dist = str(cfg.get("dist", "local"))
    if dist == "local":
        return None
    if dist != "mpi":
        raise ConfigError(f"dist must be 'local' or 'mpi', got {dist!r}")
    if combiner.sync is Sync.ASYNC:
        raise ConfigError(
            f"{combiner.name} shares one vector in one machine's memory; use dist=local"
        )
    if cfg.checkpoint.every is not None or cfg.get("resume"):
        raise ConfigError("checkpoint/resume is not supported with dist=mpi yet")
    return world()


def _mpi_max():
    from mpi4py import MPI

    return MPI.MAX


def _checkpointing(cfg) -> tuple[int | None, str | None]:
    node = cfg.get("checkpoint") or {}
    every = node.get("every")
    if every is None:
        return None, None
    if int(every) < 1:
        raise ConfigError(f"checkpoint.every must be >= 1 or null, got {every}")
    path = node.get("path")
    if path is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            path = f"{HydraConfig.get().runtime.output_dir}/checkpoint.npz"
        except ValueError:  # not inside a Hydra app (Python API)
            path = "checkpoint.npz"
    return int(every), str(path)


def _backend_env(backend: str, threads: int, options: dict) -> dict[str, str]:
    """Environment a worker of ``backend`` must start with (set before its imports)."""
    if backend != "jax":
        return {}
    from fastdist.kernels.jax_mlp import configure_jax_threads

    return configure_jax_threads(threads, options.get("compilation_cache"))


def _backend_options(cfg) -> dict:
    cache = cfg.backend.get("compilation_cache")
    return {"compilation_cache": None if cache is None else str(cache)}
