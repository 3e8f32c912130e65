"""Gradient averaging (synchronous data-parallel SGD), one-shot weight averaging, and
periodic averaging (local SGD)."""

from __future__ import annotations

import numpy as np

from fastdist.combiners.base import (
    CombinedModel,
    Combiner,
    FinalizeInputs,
    check_init,
    require_shared,
)
from fastdist.combiners.exchange import gradient_mean, no_exchange, periodic_average
from fastdist.errors import ConfigError

__all__ = ["grad_avg", "weight_avg", "local_sgd", "mean_of_rows", "weighted_mean_of_rows"]


def _shared_row(inputs: FinalizeInputs) -> CombinedModel:
    return CombinedModel((inputs.worker_params[0].copy(),))


def mean_of_rows(rows: np.ndarray) -> np.ndarray:
    """Mean parameter vector, accumulated in float64 so it does not depend on order."""
    return rows.astype(np.float64).mean(axis=0).astype(np.float32)


def _average(inputs: FinalizeInputs) -> CombinedModel:
    if inputs.reduce is not None:  # a robust rule, or attackers: not a weighted mean
        return CombinedModel((inputs.reduce(inputs.worker_params),))
    return CombinedModel((weighted_mean_of_rows(inputs.worker_params, inputs.samples_seen),))


def weighted_mean_of_rows(rows: np.ndarray, samples_seen: np.ndarray) -> np.ndarray:
    """Mean weighted by the samples each worker trained on; the plain mean when they
    all saw the same number (always, unless a worker failed and the others went on)."""
    seen = np.asarray(samples_seen, dtype=np.float64)
    if len(seen) != len(rows) or np.all(seen == seen[0]) or seen.sum() <= 0:
        return mean_of_rows(rows)
    return (np.tensordot(seen / seen.sum(), rows.astype(np.float64), axes=1)).astype(np.float32)


def grad_avg(init: str = "shared") -> Combiner:
    """Every step, average the workers' gradients in shared memory; every worker then
    sees the same update. Equals single-process SGD with an N-times larger batch."""
    return Combiner("grad_avg", gradient_mean(), _shared_row, init=require_shared(init, "grad_avg"))


def weight_avg(init: str = "shared") -> Combiner:
    """Train independently on each shard, average the parameter vectors at the end."""
    return Combiner(
        "weight_avg", no_exchange(), _average, init=check_init(init), averages_at_end=True
    )


def local_sgd(
    period: int | None = 8,
    average_state: bool = False,
    init: str = "shared",
    average_momentum: bool | None = None,
) -> Combiner:
    """Local SGD / periodic averaging: H local steps, then the parameter vectors (and,
    with ``average_state``, every optimizer-state vector: momentum, Adam's moments)
    are averaged in shared memory. Without it each worker keeps its own state.

    ``period=1`` with plain SGD reproduces ``grad_avg``: averaging theta_i - lr*g_i
    equals theta - lr*mean(g_i). ``period=None`` never averages during training, which
    is one-shot weight averaging. ``average_momentum`` is the former name of
    ``average_state`` (kept so existing sweeps run unchanged).
    """
    if period is not None and (not isinstance(period, int) or period < 1):
        raise ConfigError(f"combiner.period must be a positive integer or null, got {period!r}")
    if average_momentum is not None:
        if average_state and not average_momentum:
            raise ConfigError(
                "combiner.average_momentum is the old name of combiner.average_state: "
                "set only average_state"
            )
        average_state = bool(average_momentum)
    if period is None:
        exchange = no_exchange()
    else:
        exchange = periodic_average(period, average_state=bool(average_state))
    return Combiner(
        "local_sgd", exchange, _average, init=check_init(init), averages_at_end=period is None
    )
