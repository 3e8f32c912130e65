"""Fisher-weighted averaging (Matena & Raffel 2022).

Each worker's parameters are weighted, element by element, by that worker's diagonal
Fisher information: a parameter the worker's predictions depend on strongly counts
more than one it barely uses. The Fisher is estimated on the worker's own training
shard as the mean over ``n_samples`` random rows of the squared per-example gradient of
``log p(y | x)``. Which ``y``:

* ``"expected"`` (``fisher_avg``'s default): the exact expectation over
  ``y ~ p(. | x)``, ``sum_c p_c (d log p_c)^2``, one backward pass per class: what the
  paper's reference implementation computes for its classifiers (it has no sampling).
* ``"sampled"``: one ``y ~ p(. | x)`` per row, drawn from the model's own predictive
  distribution: an unbiased, cheaper (one pass) estimate of the same Fisher.
* ``"true"``: the shard's labels: the "empirical Fisher", a different quantity.

The merge (``fisher_avg``, :func:`merge_weight`) follows the reference too: each
model's Fisher floored at ``floor`` (1e-6) and its term divided by the Fisher's L2 norm;
an additive ``epsilon`` and the unnormalised sum are options.

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

__all__ = [
    "LABELS",
    "diagonal_fisher",
    "fisher_avg",
    "fisher_norm",
    "merge_weight",
    "require_per_example_grads",
]

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


def _check_number(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(f"combiner.{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"combiner.{name} must be true or false, got {value!r}")
    return value


def fisher_norm(fisher: np.ndarray) -> float:
    """The L2 norm of a diagonal Fisher over all its entries (all layers together), by
    which ``normalize`` divides that model's term; 1 for an all-zero Fisher, which has
    no scale to remove (the reference would divide by zero there)."""
    norm = float(np.sqrt(np.sum(np.square(fisher, dtype=np.float64))))
    return norm if norm > 0 else 1.0


def merge_weight(
    fisher: np.ndarray, coefficient: float, floor: float, epsilon: float, normalize: bool
) -> np.ndarray:
    """One model's elementwise weight ``w_k`` in ``theta = sum_k w_k theta_k / sum_k w_k``:

        w_k = lambda_k / c_k * (max(F_k, floor) + epsilon)

    with ``c_k = ||F_k||_2`` (:func:`fisher_norm`) when ``normalize``, else 1: the norm of
    the raw Fisher, and the floor on the raw Fisher, as the reference does (it divides
    the merging coefficient by the norm). ``floor=0`` leaves the Fisher unfloored."""
    diag = np.asarray(fisher, dtype=np.float64)
    if floor > 0:
        diag = np.maximum(diag, floor)
    scale = coefficient / fisher_norm(fisher) if normalize else coefficient
    return scale * (diag + epsilon)


def fisher_avg(
    n_samples: int = 256,
    epsilon: float = 0.0,
    init: str = "shared",
    labels: str = "expected",
    normalize: bool = True,
    floor: float = 1e-6,
    favor_target: bool = False,
) -> Combiner:
    """theta = sum_k w_k theta_k / sum_k w_k, elementwise, with
    ``w_k = lambda_k / ||F_k|| * (max(F_k, floor) + epsilon)`` and each worker's diagonal
    Fisher ``F_k`` estimated on its own shard (module docstring). The defaults are those
    of the paper's reference implementation (Matena's ``model_merging``): the exact
    expectation over classes, each model's term divided by the L2 norm of its Fisher
    (``normalize``), and the Fisher floored at 1e-6 rather than offset by an epsilon.

    ``lambda_k`` is 1, or, if a worker failed and the others went on, proportional to
    the samples the worker trained on (as ``weight_avg``). ``favor_target`` floors only
    the first worker that trained (the reference's "target" model, its default there),
    so where no worker's Fisher reaches the floor that worker's value is kept; fastdist's
    workers are peers, so the default floors every worker, and where none is informative
    the (lambda/norm-weighted) mean remains. ``floor=0, epsilon>0, normalize=false`` is
    the additive rule ``(F_k + eps)``."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(f"combiner.n_samples must be an integer >= 1, got {n_samples!r}")
    epsilon = _check_number("epsilon", epsilon)
    floor = _check_number("floor", floor)
    if floor == 0 and epsilon == 0:
        raise ConfigError("combiner.floor and combiner.epsilon cannot both be 0 (0/0 weights)")
    if labels not in LABELS:
        raise ConfigError(f"combiner.labels must be one of {', '.join(LABELS)}, got {labels!r}")
    normalize = _check_bool("normalize", normalize)
    favor_target = _check_bool("favor_target", favor_target)
    init = check_init(init)

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        rows, model = inputs.worker_params, inputs.model
        if len(inputs.shards) != len(rows):
            raise ConfigError("fisher_avg needs each worker's training shard")
        scale = _model_weights(inputs.samples_seen, len(rows))
        num = np.zeros(model.layout.size, dtype=np.float64)
        den = np.zeros(model.layout.size, dtype=np.float64)
        target = None  # favor_target: the first worker that trained
        for k, (row, (x, y)) in enumerate(zip(rows, inputs.shards)):
            if scale[k] == 0:
                continue  # a worker that failed before its first step
            target = k if target is None else target
            fisher = diagonal_fisher(model, row, x, y, n_samples, inputs.seed + k, labels)
            floored = floor if not favor_target or k == target else 0.0
            weight = merge_weight(fisher, scale[k], floored, epsilon, normalize)
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
