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

from fastdist.combiners import Combiner, FinalizeInputs
from fastdist.data import Dataset, load_dataset, shard_bounds
from fastdist.errors import ConfigError
from fastdist.evaluate import evaluate
from fastdist.model import ParamLayout, init_params
from fastdist.optim import SGD
from fastdist.pool import WorkerPool
from fastdist.shm import SharedArena
from fastdist.worker import WorkerSpec, train_worker

__all__ = ["RunResult", "train", "build_combiner"]

log = logging.getLogger("fastdist")


@dataclass
class RunResult:
    """What a run produced: the metrics written to metrics.json, and the final
    per-worker parameters (for saving and re-combining)."""

    metrics: dict
    worker_params: np.ndarray
    layout: ParamLayout


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


def _check(cfg, dataset: Dataset) -> tuple[int, int, int]:
    workers, batch = int(cfg.workers), int(cfg.batch_size)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if batch < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch}")
    shard = len(dataset.y_train) // workers
    if batch > shard:
        raise ConfigError(
            f"batch_size={batch} is larger than a shard ({shard} rows = "
            f"{len(dataset.y_train)} training rows / {workers} workers)"
        )
    steps_per_epoch = shard // batch
    if cfg.get("steps") is not None:
        total = int(cfg.steps)
        if total < 1:
            raise ConfigError(f"steps must be >= 1, got {total}")
    else:
        if int(cfg.epochs) < 1:
            raise ConfigError(f"epochs must be >= 1, got {cfg.epochs}")
        total = int(cfg.epochs) * steps_per_epoch
    return workers, batch, total


class _Progress:
    """Receives workers' control messages: thread pools at start, one line per epoch
    once every worker has reported that epoch."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.blas_threads: dict[int, list] = {}
        self._pending: dict[int, list[dict]] = {}

    def __call__(self, kind: str, rank: int, payload) -> None:
        if kind == "ready":
            self.blas_threads[rank] = payload["threads"]
        elif kind == "epoch":
            self._epoch(payload)

    def _epoch(self, payload: dict) -> None:
        reports = self._pending.setdefault(payload["epoch"], [])
        reports.append(payload)
        if len(reports) < self.workers:
            return
        del self._pending[payload["epoch"]]
        seen = sum(r["seen"] for r in reports)
        log.info(
            "epoch %d  loss %.4f  train_acc %.4f  samples/s %.0f",
            payload["epoch"] + 1,
            sum(r["loss_sum"] for r in reports) / max(seen, 1),
            sum(r["correct"] for r in reports) / max(seen, 1),
            seen / max(max(r["seconds"] for r in reports), 1e-9),
        )

    @property
    def max_threads(self) -> int:
        """The largest thread pool any worker had loaded (1 when pinning worked)."""
        counts = [n for libs in self.blas_threads.values() for _, n in libs]
        return max(counts, default=0)


def train(cfg) -> RunResult:
    """Run one training job described by a composed config (see conf/config.yaml)."""
    dataset = load_dataset(cfg.dataset)
    workers, batch, total_steps = _check(cfg, dataset)
    combiner = build_combiner(cfg.combiner)
    optimizer = SGD(**{k: float(v) for k, v in cfg.optimizer.items() if k != "name"})
    hidden = tuple(int(h) for h in cfg.model.hidden)
    layout = ParamLayout((dataset.n_features, *hidden, dataset.n_classes))
    seed = int(cfg.seed)
    backend = str(cfg.backend.name)
    threads = int(cfg.backend.threads)

    shards = shard_bounds(len(dataset.y_train), workers)
    rows = 1 if combiner.shares_parameters else workers
    arrays = {
        "x_train": (dataset.x_train.shape, np.float32),
        "y_train": (dataset.y_train.shape, np.int32),
        "params": ((rows, layout.size), np.float32),
        "momentum": ((rows, layout.size), np.float32),
        "grads": ((workers, layout.size), np.float32),
    }
    with SharedArena.create(arrays) as arena:
        # The training set is shuffled once, as it is written into the arena; shards
        # are then contiguous slices of it, read in place by their worker.
        order = np.random.default_rng(seed).permutation(len(dataset.y_train))
        np.take(dataset.x_train, order, axis=0, out=arena["x_train"])
        np.take(dataset.y_train, order, out=arena["y_train"])
        for row in range(rows):
            row_seed = seed + row if combiner.init == "independent" else seed
            init_params(layout, row_seed, out=arena["params"][row])

        spec = WorkerSpec(
            arena=arena.spec,
            sizes=layout.sizes,
            backend=backend,
            sync=combiner.sync,
            period=combiner.period,
            average_momentum=bool(combiner.options.get("average_momentum", False)),
            shards=tuple(shards),
            batch_size=batch,
            total_steps=total_steps,
            optimizer=optimizer,
            seed=seed,
            threads=threads,
        )
        log.info(
            "training %s on %s: %d workers x batch %d, %d steps, backend %s, model %s",
            combiner.name,
            dataset.name,
            workers,
            batch,
            total_steps,
            backend,
            "-".join(map(str, layout.sizes)),
        )
        spawned = time.monotonic()
        with WorkerPool(workers, train_worker, (spec,), threads=threads) as pool:
            progress = _Progress(workers)
            done = pool.join(progress)
        worker_params = arena["params"].copy()

    samples_seen = np.array([done[r]["samples"] for r in range(workers)], dtype=np.int64)
    start = min(d["start"] for d in done.values())
    end = max(d["end"] for d in done.values())
    first_step = max(d["first_step_done"] or d["end"] for d in done.values())
    combined = combiner.finalize(FinalizeInputs(worker_params, layout, samples_seen))
    scores = evaluate(combined, layout, dataset.x_test, dataset.y_test)
    train_seconds = end - start
    metrics = {
        "test_accuracy": scores["accuracy"],
        "test_loss": scores["loss"],
        "train_seconds": train_seconds,
        "samples_per_second": float(samples_seen.sum()) / max(train_seconds, 1e-12),
        "startup_seconds": first_step - spawned,
        "workers": workers,
        "combiner": combiner.name,
        "backend": backend,
        "dataset": dataset.name,
        "seed": seed,
        "batch_size": batch,
        "steps": total_steps,
        "samples_seen": int(samples_seen.sum()),
        "model": list(layout.sizes),
        "n_params": layout.size,
        "worker_blas_threads": progress.max_threads,
    }
    log.info(
        "test_accuracy %.4f  test_loss %.4f  %.0f samples/s over %.2f s",
        metrics["test_accuracy"],
        metrics["test_loss"],
        metrics["samples_per_second"],
        train_seconds,
    )
    return RunResult(metrics, worker_params, layout)
