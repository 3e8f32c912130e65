"""Gradient averaging (synchronous data-parallel SGD) and one-shot weight averaging."""

from __future__ import annotations

import numpy as np

from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs, Sync
from fastdist.errors import ConfigError

__all__ = ["grad_avg", "weight_avg"]


def _shared_row(inputs: FinalizeInputs) -> CombinedModel:
    return CombinedModel((inputs.worker_params[0].copy(),))


def _mean_of_rows(inputs: FinalizeInputs) -> CombinedModel:
    # float64 accumulation: the average must not depend on float32 summation order.
    return CombinedModel((inputs.worker_params.astype(np.float64).mean(axis=0).astype(np.float32),))


def grad_avg() -> Combiner:
    """Every step, average the workers' gradients in shared memory; every worker then
    sees the same update. Equals single-process SGD with an N-times larger batch."""
    return Combiner("grad_avg", Sync.GRADIENTS, _shared_row)


def weight_avg(init: str = "shared") -> Combiner:
    """Train independently on each shard, average the parameter vectors at the end."""
    if init not in ("shared", "independent"):
        raise ConfigError(f"combiner.init must be 'shared' or 'independent', got {init!r}")
    return Combiner("weight_avg", Sync.NONE, _mean_of_rows, init=init)
