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
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from fastdist.combiners.base import CombinedModel, Combiner
from fastdist.combiners.evaluate import predict_proba, preload_host_kernel
from fastdist.combiners.reduction import anchored
from fastdist.engine.barrier import check_memory_order
from fastdist.engine.cleanup import remove_stale_segments
from fastdist.engine.memory import check_memory_plan
from fastdist.engine.shm import SharedArena, arena_bytes
from fastdist.errors import ConfigError
from fastdist.models.base import Model
from fastdist.run.accounting import run_accounting
from fastdist.run.arena import (
    arena_arrays,
    check_data_memory,
    fill_arena,
    resume_into,
    starting_point,
)
from fastdist.run.checkpoint import check_checkpoint_path, config_hash, read_checkpoint
from fastdist.run.combine import combine_model, describe_model, gather_training, run_metrics
from fastdist.run.config_checks import checkpointing
from fastdist.run.config_schema import enum_value
from fastdist.run.distributed import world
from fastdist.run.placement import Placement, plan_run
from fastdist.run.pool_cache import pool_options, reuse_requested
from fastdist.run.preparation import prepare_data
from fastdist.run.preparation import validation_fraction as held_out_fraction
from fastdist.run.prestart import check_job
from fastdist.run.records import build_model
from fastdist.run.robustness import reducing, reduction_metrics, under_attack
from fastdist.run.saved_model import locate, read_base, save_model
from fastdist.run.supervision import supervise
from fastdist.run.watch import watch
from fastdist.run.worker import WorkerSpec
from fastdist.run.worker_settings import check_worker_overrides, worker_settings

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
    input_shape: tuple[int, ...] = ()
    model_config: dict = field(default_factory=dict)  # the model record's config
    # The parameters every worker started from (init_from, or the shared start); None
    # when they started independently. Saved with the states for fastdist-combine.
    base: np.ndarray | None = None

    def save(self, path) -> Path:
        """Write the combined model to ``path`` (a file, or a directory: its
        model.npz), for ``fastdist.load`` and ``init_from``; returns the file."""
        if self.combined is None:
            raise ValueError("this result holds no combined model (an MPI rank > 0)")
        return save_model(path, self.combined, self.model, self.model_config, self.input_shape)

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
    job = check_job(cfg)
    combiner, optimizer, lr_schedule = job.combiner, job.optimizer, job.schedule
    check_memory_order()
    for name in remove_stale_segments():
        log.warning("removed /dev/shm/%s, left by a run that was killed", name)
    fraction = held_out_fraction(cfg, combiner)
    comm = _mpi_world(cfg, combiner)
    place = Placement.of(comm, int(cfg.workers))
    saving = _check_files(cfg, fraction)  # checkpoint path, resume file, memory: before start-up

    # 1. Split: shuffle once (by index), cut the shards; the model follows the data's
    # shape. The rows go straight into shared memory (or stay in their .npy files);
    # leaving the block unlinks them, also on any error.
    with prepare_data(cfg, place.total_workers, fraction, shared=True) as data:
        model = build_model(cfg.model, data.dataset.input_shape, data.dataset.n_classes)
        # aggregate=, compress=, byzantine.*: on every node's workers, for this model.
        combiner = reducing(cfg, combiner, place.total_workers, place.mpi, model)
        if combiner.check_model is not None:
            combiner.check_model(model)
        base = read_base(cfg.init_from, model) if cfg.init_from else None
        plan = plan_run(cfg, data, place, optimizer, lr_schedule)
        check_worker_overrides(cfg, combiner, optimizer, place.total_workers)
        if combiner.check_workers is not None:
            combiner.check_workers(place.total_workers)
        per_worker = worker_settings(
            cfg, optimizer, plan.rates, place.total_workers, plan.epoch_steps
        )
        if per_worker is not None:  # the run lasts as long as its longest worker
            plan = per_worker.plan(plan, combiner, cfg)
        # 2. One shared-memory arena: parameters, optimizer state, gradients.
        arrays = arena_arrays(model, optimizer, combiner, place, plan)
        check_memory_plan(arena_bytes(arrays), what="this run's arena")
        backend = enum_value(cfg.backend.name)
        model.kernel(backend, 1)  # an unknown or uninstalled backend fails here, not in a worker
        with SharedArena.create(arrays) as arena:
            fill_arena(arena, model, combiner, int(cfg.seed), base)
            start = starting_point(arena, combiner, base)
            start_step = resume_into(cfg, arena, combiner, saving.resumed, plan.total_steps)
            if "anchor" in arena:  # one-shot averaging measures updates from the start
                combiner = anchored(combiner, arena["anchor"], plan.total_steps)
            spec = _worker_spec(cfg, arena, data, model, optimizer, combiner, backend, place, plan)
            spec = dataclasses.replace(
                spec, start_step=start_step, per_worker=per_worker, **saving.spec_fields
            )
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
                base=start,
            )
            done, failures = _supervised(cfg, arena, spec, progress, comm, saving, model)
            params = arena["params"]
            shared = combiner.shares_parameters
            trained = gather_training(done, spawned, params, comm, shared, place)
            if trained is None:  # dist=mpi, rank > 0: rank 0 reports for the whole job
                return RunResult({}, params.copy(), model, np.zeros(0), fraction)
            # 4-5. Combine and evaluate, inside the arena's and the rows' lifetime:
            # data-dependent combiners read the shards.
            seen = trained.samples_seen
            if per_worker is not None and per_worker.ragged:  # lengths chosen, not failures
                seen = per_worker.merge_samples(seen, plan.batch)
            metrics, combined = combine_model(
                combiner,
                trained.worker_params,
                model,
                data,
                seen,
                int(cfg.seed),
                bool(cfg.diagnostics),
                base=start,
            )
            rows = progress.history.rows if progress.history is not None else []
            metrics.update(run_accounting(cfg, combiner, optimizer, model, data, spec, done, rows))
    # 6. Cleaned up: the pool is gone, the arena unlinked (also on any error above).
    metrics.update(
        run_metrics(cfg, trained, place, data, model, optimizer, combiner, spec, progress)
    )
    metrics["failures"] = failures
    if per_worker is not None:
        metrics.update(per_worker.summary())
    metrics.update(reduction_metrics(combiner))
    log.info(
        "test_accuracy %.4f  test_loss %.4f  %.0f samples/s over %.2f s%s",
        *(metrics[k] for k in ("test_accuracy", "test_loss", "samples_per_second")),
        trained.train_seconds,
        under_attack(combiner),
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
        tuple(data.dataset.input_shape),
        OmegaConf.to_container(cfg.model, resolve=True),
        start,
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
        return {
            "checkpoint_every": self.every,
            "checkpoint_path": self.path,
            "config_hash": self.digest,
        }


def _check_files(cfg, fraction: float) -> _Saving:
    """Everything that can be checked before start-up is: the checkpoint's file, the
    file to resume from (its shapes once the model is known), the data's memory."""
    digest = config_hash(cfg)
    every, path = checkpointing(cfg)
    if path:
        check_checkpoint_path(path)
    resumed = read_checkpoint(cfg.resume, digest) if cfg.resume else None
    if cfg.init_from:
        locate(cfg.init_from, "init_from")  # read in full once the model is built
    check_data_memory(cfg, fraction)
    return _Saving(digest, every, path, resumed)


def _worker_spec(cfg, arena, data, model, optimizer, combiner, backend, place, plan):
    return WorkerSpec(
        arena=arena.spec,
        data=data.rows_spec(plan.rows),  # opened per job: a warm pool's workers too
        model=model,
        backend=backend,
        exchange=combiner.exchange,
        shards=plan.shards,
        shard_sizes=tuple(hi - lo for lo, hi in data.shards),
        batch_size=plan.batch,
        total_steps=plan.total_steps,
        optimizer=optimizer,
        rates=plan.rates,
        seed=int(cfg.seed),
        threads=int(cfg.backend.threads),
        backend_options=_backend_options(cfg),
        hierarchical=place.mpi,
        rank_offset=place.first_worker,
        history_every=plan.history_every,
        eval_every=plan.eval_every,
        eval_at_sync=plan.eval_at_sync,
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
            pool_options=pool_options(cfg, spec.backend),
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


def _mpi_world(cfg, combiner: Combiner):
    """MPI.COMM_WORLD under dist=mpi (None for a single machine), with what it cannot do."""
    if enum_value(cfg.dist) == "local":
        return None
    if not combiner.exchange.meets:  # Hogwild: the exchange is one machine's memory
        raise ConfigError(
            f"{combiner.name} shares one vector in one machine's memory; use dist=local"
        )
    if cfg.checkpoint.every is not None or cfg.resume:
        raise ConfigError("checkpoint/resume is not supported with dist=mpi yet")
    return world()


def _backend_options(cfg) -> dict:
    cache = cfg.backend.compilation_cache
    return {"compilation_cache": None if cache is None else str(cache)}
