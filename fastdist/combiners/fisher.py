"""Fisher-weighted averaging (Matena & Raffel 2022).

Each worker's parameters are weighted, element by element, by that worker's diagonal
Fisher information: a parameter the worker's predictions depend on strongly counts
more than one it barely uses. The Fisher is estimated on the worker's own training
shard as the mean over ``n_samples`` random rows of the squared per-example gradient of
``log p(y | x)``. Which ``y``:

* ``"sampled"`` (default): one ``y ~ p(. | x)`` per row, drawn from the model's own
  predictive distribution: an unbiased estimate of the true Fisher, as in the paper.
* ``"expected"``: the exact expectation over ``y ~ p(. | x)``, one backward pass per
  class (what the paper's reference implementation computes for classifiers).
* ``"true"``: the shard's labels: the "empirical Fisher", a different quantity.

Per-example gradients are computed for all rows at once: the MLP forward/backward of
``fastdist.models.kernels.reference_mlp``, in float64, with the squared per-example weight gradient
``outer(h_i, delta_i) ** 2 = outer(h_i ** 2, delta_i ** 2)`` summed as one matmul.
"""

from __future__ import annotations

import math

import numpy as np

from fastdist.combiners.base import (
    CombinedModel,
    Combiner,
    FinalizeInputs,
    check_init,
)
from fastdist.combiners.exchange import no_exchange
from fastdist.errors import ConfigError
from fastdist.models.base import Model

__all__ = ["LABELS", "diagonal_fisher", "fisher_avg", "require_per_example_grads"]

LABELS = ("sampled", "expected", "true")
_CHUNK = 1024  # rows per forward/backward, to bound the activations' memory


def require_per_example_grads(model: Model) -> None:
    if not model.has_per_example_grads:
        raise ConfigError(
            f"fisher_avg needs per-example gradients, which model {model.name} does not "
            "provide (its record has no add_squared_grads)"
        )


def diagonal_fisher(
    model: Model,
    flat: np.ndarray,
    x: np.ndarray,
    y: np.ndarray | None = None,
    n_samples: int = 256,
    seed: int = 0,
    labels: str = "sampled",
) -> np.ndarray:
    """The diagonal Fisher of the model ``flat`` at ``min(n_samples, len(x))`` rows of
    ``x`` drawn without replacement: the mean squared per-example gradient of
    ``log p(y | x)``, float64, shape ``(P,)``. ``labels`` picks ``y`` (module docstring);
    ``y`` is read only for ``labels="true"``. Reproducible for a given ``seed``."""
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if labels == "true" and (y is None or len(y) != len(x)):
        raise ValueError("labels='true' needs one label per row of x")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(x), size=min(n_samples, len(x)), replace=False))
    draws = rng.random(len(rows)) if labels == "sampled" else None
    params = np.asarray(flat, dtype=np.float64)
    n_classes = model.n_classes
    fisher = np.zeros(model.layout.size, dtype=np.float64)
    for start in range(0, len(rows), _CHUNK):
        idx = rows[start : start + _CHUNK]
        logits, cache = model.per_example_forward(params, np.asarray(x[idx], dtype=np.float64))
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        # d(-log p(y|x)) / d logits = p - onehot(y); its square equals that of d log p.
        if labels == "expected":
            for c in range(n_classes):
                dlogits = probs.copy()
                dlogits[:, c] -= 1.0
                model.add_squared_grads(params, cache, dlogits, probs[:, c], fisher)
            continue
        if labels == "sampled":
            below = np.cumsum(probs, axis=1) <= draws[start : start + _CHUNK, None]
            target = np.minimum(below.sum(axis=1), n_classes - 1)  # first cdf > u
        else:
            target = np.asarray(y[idx], dtype=np.int64)
            if target.size and (target.min() < 0 or target.max() >= n_classes):
                raise ValueError(f"labels must lie in [0, {n_classes}), got {target}")
        dlogits = probs.copy()
        dlogits[np.arange(len(idx)), target] -= 1.0
        model.add_squared_grads(params, cache, dlogits, np.ones(len(idx)), fisher)
    return fisher / max(len(rows), 1)


def _model_weights(samples_seen: np.ndarray, n_rows: int) -> np.ndarray:
    """Per-worker scalar weights (the paper's lambda_k): proportional to the samples each
    worker trained on, as in ``weight_avg``; all ones when they all saw the same number."""
    seen = np.asarray(samples_seen, dtype=np.float64)
    if len(seen) != n_rows or np.all(seen == seen[0]) or seen.sum() <= 0:
        return np.ones(n_rows)
    return seen / seen.mean()


def fisher_avg(
    n_samples: int = 256, epsilon: float = 1e-8, init: str = "shared", labels: str = "sampled"
) -> Combiner:
    """theta = sum_k (F_k + eps) theta_k / sum_k (F_k + eps), elementwise, with each
    worker's diagonal Fisher ``F_k`` estimated on its own shard; where every worker's
    Fisher is (near) zero the plain mean remains. If a worker failed and the others went
    on, each worker's term is also scaled by the samples it trained on (as ``weight_avg``)."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"combiner.n_samples must be an integer >= 1, got {n_samples!r}")
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, int | float)
        or not math.isfinite(epsilon)
        or epsilon <= 0
    ):
        raise ConfigError(f"combiner.epsilon must be a finite number > 0, got {epsilon!r}")
    if labels not in LABELS:
        raise ConfigError(f"combiner.labels must be one of {', '.join(LABELS)}, got {labels!r}")
    init = check_init(init)

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        rows, model = inputs.worker_params, inputs.model
        if len(inputs.shards) != len(rows):
            raise ConfigError("fisher_avg needs each worker's training shard")
        scale = _model_weights(inputs.samples_seen, len(rows))
        num = np.zeros(model.layout.size, dtype=np.float64)
        den = np.zeros(model.layout.size, dtype=np.float64)
        for k, (row, (x, y)) in enumerate(zip(rows, inputs.shards)):
            if scale[k] == 0:
                continue  # a worker that failed before its first step
            fisher = diagonal_fisher(model, row, x, y, n_samples, inputs.seed + k, labels)
            weight = scale[k] * (fisher + epsilon)
            num += weight * row
            den += weight
        return CombinedModel(((num / den).astype(np.float32),))

    return Combiner(
        "fisher_avg",
        no_exchange(),
        finalize,
        init=init,
        check_model=require_per_example_grads,
    )
