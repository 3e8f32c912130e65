"""Fisher-weighted averaging (Matena & Raffel 2022).

Each worker's parameters are weighted, element by element, by that worker's diagonal
Fisher information: a parameter the worker's predictions depend on strongly counts
more than one they barely use. The Fisher is estimated on the worker's own training
shard as the mean squared per-example gradient of log p(y | x), with y sampled from the
model's own predictive distribution (the true Fisher, as in the paper, rather than the
"empirical" one that uses the labels).
"""

from __future__ import annotations

import numpy as np

from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs, Sync, check_init
from fastdist.errors import ConfigError
from fastdist.model import ParamLayout

__all__ = ["diagonal_fisher", "fisher_avg"]


def diagonal_fisher(
    layout: ParamLayout,
    flat: np.ndarray,
    x: np.ndarray,
    n_samples: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """Mean over ``n_samples`` rows of ``x`` of the squared gradient of log p(y|x),
    y ~ p(.|x); float64, shape (P,)."""
    from fastdist.kernels.numba_mlp import NumbaKernel

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=min(n_samples, len(x)), replace=False)
    kernel = NumbaKernel(layout, max_batch=max(1, len(rows)))
    params = np.ascontiguousarray(flat, dtype=np.float32)
    logits = np.empty((len(rows), layout.n_classes), dtype=np.float32)
    xs = np.ascontiguousarray(x[rows], dtype=np.float32)
    kernel.predict_logits(params, xs, logits)
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    sampled = np.array([rng.choice(layout.n_classes, p=p) for p in probs], dtype=np.int32)
    fisher = np.zeros(layout.size, dtype=np.float64)
    grad = np.empty(layout.size, dtype=np.float32)
    for i in range(len(rows)):
        # batch of one: the kernel's mean-loss gradient is the per-example gradient
        kernel.loss_and_grad(params, xs[i : i + 1], sampled[i : i + 1], grad)
        fisher += grad.astype(np.float64) ** 2
    return fisher / max(len(rows), 1)


def fisher_avg(n_samples: int = 256, epsilon: float = 1e-8, init: str = "shared") -> Combiner:
    """theta = sum_k (F_k + eps) theta_k / sum_k (F_k + eps), elementwise; where every
    worker's Fisher is zero the plain mean remains."""
    if n_samples < 1:
        raise ConfigError(f"combiner.n_samples must be >= 1, got {n_samples}")
    if not epsilon > 0:
        raise ConfigError(f"combiner.epsilon must be > 0, got {epsilon}")

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        rows = inputs.worker_params
        if len(inputs.shards) != len(rows):
            raise ConfigError("fisher_avg needs each worker's training shard")
        num = np.zeros(inputs.layout.size, dtype=np.float64)
        den = np.zeros(inputs.layout.size, dtype=np.float64)
        for k, (row, (x, _)) in enumerate(zip(rows, inputs.shards)):
            weight = diagonal_fisher(inputs.layout, row, x, n_samples, inputs.seed + k) + epsilon
            num += weight * row
            den += weight
        return CombinedModel(((num / den).astype(np.float32),))

    return Combiner("fisher_avg", Sync.NONE, finalize, init=check_init(init))
