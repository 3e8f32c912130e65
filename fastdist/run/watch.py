"""Wiring for watching a run: how often to report and evaluate, and the message
handler (epoch lines + history + display) the coordinator hands to the pool."""

from __future__ import annotations

from fastdist.run.config_schema import enum_value
from fastdist.run.evaluation import combined_scorer
from fastdist.run.history import COLUMNS, History, bytes_per_sync, learning_rate
from fastdist.run.loggers import make_sinks
from fastdist.run.progress import EpochLog, make_display

__all__ = ["history_plan", "multirun_job", "run_dir", "watch"]


def run_dir() -> str | None:
    """The Hydra job's output directory; None outside a Hydra app (Python API)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.output_dir


def multirun_job() -> int | None:
    """This job's number in a multirun (``-m``); None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return int(hydra_cfg.job.num)


def history_plan(cfg, shards, batch: int, mpi: bool) -> tuple[int, int, int]:
    """(steps per epoch, steps between history rows, steps between evaluations; 0 =
    never). An evaluation needs the model on this machine: under MPI only right after a
    sync (``eval.at_sync``), when every node holds the model the workers agree on."""
    steps_per_epoch = max(min(hi - lo for lo, hi in shards) // batch, 1)
    every = int(cfg.history.every)
    eval_every = cfg.eval.every
    eval_every = steps_per_epoch if eval_every is None else int(eval_every)
    if (mpi and not cfg.eval.at_sync) or not every:
        eval_every = 0
    return steps_per_epoch, every, eval_every


def watch(cfg, *, place, spec, model, optimizer, combiner, data, arena, steps_per_epoch, base=None):
    """The handler of the workers' messages for this run (``EpochLog``); ``base``: the
    parameters the workers started from (for merges from a common base)."""
    quiet = bool(cfg.quiet) or place.node != 0
    history = None
    scores = bool(spec.eval_every) and place.node == 0
    ragged = spec.per_worker is not None and spec.per_worker.ragged
    first = place.first_worker
    own_steps = spec.per_worker.steps[first : first + place.workers] if ragged else None
    if spec.history_every:
        history = History(
            workers=place.workers,
            batch=spec.batch_size,
            steps_per_epoch=steps_per_epoch,
            lr=_rate_column(optimizer, spec),
            exchange=combiner.exchange,
            total_steps=spec.total_steps,
            sync_bytes=bytes_per_sync(
                combiner.exchange,
                place.total_workers,
                model.layout.size,
                len(optimizer.state_names),
            ),
            # Only rank 0 reports (dist=mpi): the other ranks score nothing.
            score=combined_scorer(combiner, model, data, spec.seed, base) if scores else None,
            arena=arena,
            # MPI ranks > 0 record nothing: rank 0 writes the run's files.
            sinks=make_sinks(cfg.logger, run_dir(), COLUMNS) if place.node == 0 else [],
            fills_finished=ragged,
            own_steps=own_steps if ragged else None,
        )
    display = make_display(
        enum_value(cfg.progress),
        spec.total_steps,
        quiet=quiet,
        multirun_job=multirun_job(),
    )
    if history is not None:
        if display is not None:
            history.listeners.append(display)
        if bool(cfg.verbose) and not quiet:
            history.listeners.append(_log_row)
    return EpochLog(place.workers, quiet=quiet, history=history, display=display)


def _rate_column(optimizer, spec):
    """history.csv's lr: the rate every worker used at that step; empty when the
    workers follow different rates (worker_overrides: metrics.json's worker_lr_*)."""
    own = spec.per_worker
    if own is not None and not own.same_rates:
        return lambda step: None
    rates = spec.rates if own is None else own.rates[0]
    return lambda step: learning_rate(optimizer, step, rates)


def _log_row(row: dict) -> None:
    import logging

    shown = {k: v for k, v in row.items() if v is not None and k != "step"}
    text = "  ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()
    )
    logging.getLogger("fastdist").info("step %d  %s", row["step"], text)
