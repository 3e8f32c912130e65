"""Steps 4 and 5 of the recipe: combine the trained workers, score the result, and
assemble metrics.json. ``fastdist-combine`` calls :func:`combine` on saved states, so
an ablation over combiners differs in nothing else."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs
from fastdist.combiners.evaluate import evaluate
from fastdist.errors import ConfigError
from fastdist.models.base import Model
from fastdist.run.config_schema import enum_value
from fastdist.run.diagnostics import worker_diagnostics
from fastdist.run.distributed import gather_rows
from fastdist.run.preparation import PreparedData

__all__ = [
    "Trained",
    "combine",
    "combine_model",
    "describe_model",
    "gather_training",
    "run_metrics",
]


def describe_model(model: Model) -> str:
    summary = model.describe()
    return "-".join(map(str, summary)) if isinstance(summary, list) else str(summary)


def combine(
    combiner: Combiner,
    worker_params: np.ndarray,
    model: Model,
    data: PreparedData,
    samples_seen: np.ndarray,
    seed: int,
    diagnostics: bool = True,
    base: np.ndarray | None = None,
) -> dict:
    """Finalize ``combiner`` on trained worker states and score it on the test set.
    ``base``: the parameters every worker started from (FinalizeInputs.base)."""
    return combine_model(
        combiner, worker_params, model, data, samples_seen, seed, diagnostics, base
    )[0]


def combine_model(
    combiner: Combiner,
    worker_params: np.ndarray,
    model: Model,
    data: PreparedData,
    samples_seen: np.ndarray,
    seed: int,
    diagnostics: bool = True,
    base: np.ndarray | None = None,
) -> tuple[dict, CombinedModel]:
    """:func:`combine`'s metrics, and the combined model itself."""
    if combiner.needs_validation and data.validation is None:
        raise ConfigError(f"{combiner.name} needs a validation split: set validation_fraction")
    inputs = FinalizeInputs(
        worker_params,
        model,
        samples_seen,
        data.shard_arrays(),
        data.validation,
        seed,
        base=base,
    )
    combined: CombinedModel = combiner.finalize(inputs)
    x_test, y_test = data.dataset.x_test, data.dataset.y_test
    scores = evaluate(combined, model, x_test, y_test)
    metrics = {
        "test_accuracy": scores["accuracy"],
        "test_loss": scores["loss"],
        "combiner": combiner.name,
        "members": len(combined.members),
        **{f"combiner_{k}": v for k, v in combined.info.items()},
    }
    independent_rows = worker_params.shape[0] > 1
    if diagnostics and independent_rows:
        # The train-loss barrier on a subset of every worker's rows (not validation).
        train = data.training_arrays()
        diag = worker_diagnostics(model, worker_params, x_test, y_test, train=train)
        metrics.update(diag)
        if len(combined.members) > 1:
            metrics["ensemble_gain_over_best_member"] = (
                scores["accuracy"] - diag["best_member_test_accuracy"]
            )
    return metrics, combined


@dataclass
class Trained:
    """What the workers left: final parameters, samples each saw, and timings."""

    worker_params: np.ndarray
    samples_seen: np.ndarray
    train_seconds: float
    startup_seconds: float
    recompilations: int


def gather_training(
    done: dict, spawned: float, params: np.ndarray, comm, shared: bool, place=None
) -> Trained | None:
    """The workers' final reports and parameter rows; under dist=mpi gathered on rank 0
    (other ranks get None): each node's own workers' rows, in rank order."""
    finished = [d for d in done.values() if "failed" not in d]
    worker_params = params.copy()
    if comm and not shared:  # every node holds every row; its own workers' are current
        worker_params = params[place.first_worker : place.first_worker + place.workers].copy()
    samples_seen = np.array([done[r]["samples"] for r in range(len(done))], dtype=np.int64)
    train_seconds = max(d["end"] for d in finished) - min(d["start"] for d in finished)
    first_step = max(d["first_step_done"] or d["end"] for d in finished)
    startup = first_step - spawned  # one clock: CLOCK_MONOTONIC is system-wide
    recompilations = max(d["recompilations"] for d in finished)
    if comm:
        from mpi4py import MPI

        if not shared:
            worker_params = gather_rows(comm, worker_params)
        samples_seen = gather_rows(comm, samples_seen)
        train_seconds = comm.allreduce(train_seconds, op=MPI.MAX)
        if comm.Get_rank() != 0:
            return None
    return Trained(worker_params, samples_seen, train_seconds, startup, recompilations)


def run_metrics(cfg, trained: Trained, place, data, model, optimizer, combiner, spec, progress):
    """The metrics.json keys that describe the run rather than the combined model."""
    seen = trained.samples_seen
    return {
        "train_seconds": trained.train_seconds,
        "samples_per_second": float(seen.sum()) / max(trained.train_seconds, 1e-12),
        "startup_seconds": trained.startup_seconds,
        "workers": place.total_workers,
        "nodes": place.nodes,
        "dist": "mpi" if place.mpi else "local",
        "backend": spec.backend,
        "dataset": data.dataset.name,
        "seed": spec.seed,
        "batch_size": spec.batch_size,
        "steps": spec.total_steps,
        "samples_seen": int(seen.sum()),
        "model": model.describe(),
        "n_params": model.layout.size,
        "optimizer": optimizer.name,
        "clip_norm": optimizer.clip_norm,
        # The effective rates: base x lr_scaling factor x schedule (first, last step).
        **spec.rates.summary(enum_value(cfg.lr_scaling), place.total_workers),
        "init": combiner.init,
        "deterministic": combiner.deterministic,
        "validation_rows": 0 if data.validation is None else len(data.validation[1]),
        "worker_blas_threads": progress.max_threads,
        "worker_cpu_affinity": [progress.cpus.get(r) for r in range(place.workers)],
        "resumed_from_step": spec.start_step,
        "recompilations_after_warmup": trained.recompilations,
        "on_worker_failure": enum_value(cfg.on_worker_failure),
        "checkpoint": spec.checkpoint_path,
    }
