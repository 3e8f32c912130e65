"""Per-worker hyperparameters: ``worker_overrides`` (the soup-ingredient setting of
Wortsman et al. 2022: N fine-tunes of one base, each with its own learning rate, weight
decay, schedule, data order or length).

Each list holds one value per worker, in global rank order. The run's own setting
applies wherever no list sets one. What the workers receive is a
:class:`WorkerSettings`: per-worker optimizer records, rates, step counts and
data-order seeds (small records; no array travels).

What cannot work is refused in one line before any worker starts:
* a combiner that trains one shared vector (``grad_avg``, ``hogwild``): its workers have
  no parameters of their own to tune;
* ragged step counts under a combiner that meets during training (its workers would
  wait at a sync a finished worker never reaches), or with checkpoints (every worker
  stops at the same steps to take one).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import numpy as np

from fastdist.combiners.base import Combiner
from fastdist.combiners.exchange import Sync
from fastdist.conf import preset, registered, resolve
from fastdist.errors import ConfigError
from fastdist.optim.base import Optimizer
from fastdist.optim.schedules import LearningRate, Schedule
from fastdist.run.records import build_optimizer, build_schedule

__all__ = ["WorkerSettings", "check_worker_overrides", "worker_settings", "overridden"]

_OPTIMIZER_OPTIONS = ("lr", "weight_decay", "momentum", "beta1", "beta2")
_LISTS = ("schedule", "data_seed", "steps", "epochs")


@dataclass(frozen=True)
class WorkerSettings:
    """What differs from worker to worker (indexed by global rank)."""

    optimizers: tuple[Optimizer, ...]
    rates: tuple[LearningRate, ...]
    steps: tuple[int, ...]
    # worker_overrides.data_seed: each worker's data order is a function of its seed
    # alone (two workers with one seed visit their rows in one order); None: the run's
    # (seed, rank) order, as without overrides.
    data_seeds: tuple[int, ...] | None = None

    @property
    def ragged(self) -> bool:
        return len(set(self.steps)) > 1

    @property
    def same_rates(self) -> bool:
        """Whether every worker follows the same rate at every step."""
        return len(set(self.rates)) == 1

    def order_of(self, row: int, seed: int) -> tuple[int, int]:
        """(seed, stream) of worker ``row``'s data order (run/worker.py epoch_order)."""
        if self.data_seeds is None:
            return seed, row
        return self.data_seeds[row], 0

    def plan(self, plan, combiner: Combiner, cfg):
        """The run's plan with these step counts: as long as the longest worker, its own
        rates over that horizon. Different counts are refused (one line) where a worker
        would wait for one that has finished: an exchange that meets during training,
        or checkpoints (also under dist=mpi, where every node computes the same counts
        from the whole training set)."""
        _refuse_ragged(self.steps, combiner, cfg)
        total = max(self.steps)
        rates = plan.rates
        rates = LearningRate(rates.base, rates.scale, rates.schedule, max(total, 1))
        return dataclasses.replace(plan, total_steps=total, rates=rates)

    def merge_samples(self, samples_seen: np.ndarray, batch: int) -> np.ndarray:
        """The samples a merge weighs each worker by: a worker that trained all of its
        own steps counts as complete however many they were (different lengths are a
        choice, not a failure); one that failed part-way counts the fraction it did."""
        longest = max(self.steps) * batch
        done = []
        for seen, steps in zip(np.asarray(samples_seen), self.steps):
            fraction = 1.0 if steps == 0 else min(float(seen) / (steps * batch), 1.0)
            done.append(round(fraction * longest))
        return np.asarray(done, dtype=np.int64)

    def summary(self) -> dict:
        """metrics.json's ``worker_*`` keys: each worker's effective settings."""
        return {
            "worker_lr": [rate.base for rate in self.rates],
            "worker_lr_peak": [rate.peak for rate in self.rates],
            "worker_lr_last_step": [rate(max(n - 1, 0)) for rate, n in self._rates_steps()],
            "worker_lr_horizon": [rate.schedule.horizon(n) for rate, n in self._rates_steps()],
            "worker_schedule": [rate.schedule.name for rate in self.rates],
            "worker_steps": list(self.steps),
            "worker_data_seed": None if self.data_seeds is None else list(self.data_seeds),
            "worker_optimizer": [_options(opt) for opt in self.optimizers],
        }

    def _rates_steps(self):
        return [(rate, max(n, 1)) for rate, n in zip(self.rates, self.steps)]


def _refuse_ragged(steps, combiner: Combiner, cfg) -> None:
    """One line where different step counts would leave a worker waiting."""
    if len(set(steps)) < 2:
        return
    if combiner.exchange.kind is not Sync.NONE:
        raise ConfigError(
            f"worker_overrides give the workers different step counts ({list(steps)}), but "
            f"{combiner.name} meets during training and a finished worker would never "
            "reach the next sync; give every worker the same steps, or use an "
            "end-of-training combiner"
        )
    if cfg.checkpoint.every is not None:
        raise ConfigError(
            "worker_overrides give the workers different step counts: checkpoint.every "
            "needs every worker at the same step"
        )


def _options(opt: Optimizer) -> dict:
    return {f.name: getattr(opt, f.name) for f in dataclasses.fields(opt)}


def overridden(cfg) -> dict:
    """``{"optimizer.lr": [...], "steps": [...], ...}``: the lists the config sets."""
    node = cfg.get("worker_overrides")
    if node is None:
        return {}
    out = {}
    for key in _OPTIMIZER_OPTIONS:
        values = node.optimizer.get(key)
        if values is not None:
            out[f"optimizer.{key}"] = list(values)
    for key in _LISTS:
        values = node.get(key)
        if values is not None:
            out[key] = list(values)
    return out


def check_worker_overrides(cfg, combiner: Combiner, optimizer: Optimizer, workers: int) -> None:
    """Everything that can be checked before the data are known (one-line errors)."""
    lists = overridden(cfg)
    if not lists:
        return
    for key, values in lists.items():
        if len(values) != workers:
            raise ConfigError(
                f"worker_overrides.{key} has {len(values)} values for {workers} workers; "
                "give one per worker"
            )
    if combiner.shares_parameters:
        raise ConfigError(
            f"worker_overrides need workers with parameters of their own; {combiner.name} "
            "trains one shared vector (use e.g. combiner=soup_uniform or weight_avg)"
        )
    if "steps" in lists and "epochs" in lists:
        raise ConfigError("worker_overrides: set steps or epochs per worker, not both")
    for key in ("steps", "epochs"):
        if key in lists and min(int(v) for v in lists[key]) < 0:
            raise ConfigError(f"worker_overrides.{key} must be >= 0, got {lists[key]}")
    seeds = lists.get("data_seed") or []
    if any(not 0 <= int(s) < 2**32 for s in seeds):
        raise ConfigError(f"worker_overrides.data_seed must be in [0, 2**32), got {seeds}")
    # Epochs become steps once the data are known (WorkerSettings.plan checks again).
    _refuse_ragged([int(v) for v in lists.get("steps", lists.get("epochs", []))], combiner, cfg)
    _optimizers(cfg, optimizer, lists, workers)
    _schedules(lists, workers, None)


def _optimizers(cfg, optimizer: Optimizer, lists: dict, workers: int) -> tuple[Optimizer, ...]:
    options = {k.split(".", 1)[1]: v for k, v in lists.items() if k.startswith("optimizer.")}
    if not options:
        return (optimizer,) * workers
    factory = resolve(str(cfg.optimizer["_target_"]), "optimizer._target_")
    takes = inspect.signature(factory).parameters
    for key in options:
        if key not in takes:
            raise ConfigError(
                f"worker_overrides.optimizer.{key}: optimizer {optimizer.name} has no option {key}"
            )
    made = []
    for k in range(workers):
        node = dict(cfg.optimizer)
        node.update({key: values[k] for key, values in options.items()})
        try:
            made.append(build_optimizer(node))
        except ConfigError as exc:
            raise ConfigError(f"worker_overrides, worker {k}: {exc}") from None
    return tuple(made)


def _schedules(lists: dict, workers: int, schedule: Schedule | None) -> tuple:
    names = lists.get("schedule")
    if names is None:
        return (schedule,) * workers
    known = registered("schedule")
    built = {}
    for name in names:
        if name not in known:
            raise ConfigError(
                f"worker_overrides.schedule: unknown schedule {name!r} "
                f"(one of {', '.join(sorted(known))})"
            )
        if name not in built:
            built[name] = build_schedule({"_target_": known[name], **preset("schedule", name)})
    return tuple(built[name] for name in names)


def worker_settings(
    cfg,
    optimizer: Optimizer,
    rates: LearningRate,
    workers: int,
    steps_per_epoch: int,
) -> WorkerSettings | None:
    """The per-worker settings of a run whose plan is known (None: no overrides).
    ``rates`` is the run's own (its scale is lr_scaling's); ``steps_per_epoch`` what one
    epoch is in this run's plan."""
    lists = overridden(cfg)
    if not lists:
        return None
    optimizers = _optimizers(cfg, optimizer, lists, workers)
    schedules = _schedules(lists, workers, rates.schedule)
    if "steps" in lists:
        steps = tuple(int(v) for v in lists["steps"])
    elif "epochs" in lists:
        steps = tuple(int(v) * steps_per_epoch for v in lists["epochs"])
    else:
        steps = (rates.total_steps,) * workers
    seeds = lists.get("data_seed")
    worker_rates = tuple(
        LearningRate(opt.lr, rates.scale, schedule, max(total, 1))
        for opt, schedule, total in zip(optimizers, schedules, steps)
    )
    data_seeds = None if seeds is None else tuple(int(s) for s in seeds)
    return WorkerSettings(optimizers, worker_rates, steps, data_seeds)
