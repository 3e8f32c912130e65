"""Task-vector merges: task arithmetic, TIES, DARE, SLERP and Model Stock.

Every worker starts from one parameter vector, the *base* (``init_from``'s model, else
the shared initialisation: :attr:`~fastdist.combiners.base.FinalizeInputs.base`), and
what worker ``k`` learned is its *task vector* ``tau_k = theta_k - base`` (Ilharco et
al. 2023). These methods merge the task vectors instead of the raw parameters, so they
need that common base: without one (``combiner.init=independent``, or states saved
without it) they refuse in one line.

The first half of this module is pure NumPy on ``base (P,)`` and ``rows (N, P)``
(float64 arithmetic, float32 results); the second half wraps them as end-of-training
combiners. Where a method is defined per layer, ``segments`` (``[start, stop)`` of each
tensor, from the model's layout) apply it tensor by tensor:

- task arithmetic, DARE: element-wise, so per-tensor makes no difference;
- TIES trims over the whole task vector by default, as the paper and its code do
  (``per_tensor=true``: per tensor, as mergekit);
- SLERP and Model Stock work per tensor (mergekit; Model Stock's paper, per layer).

Each worker here is usually a fine-tune of ``init_from``'s model on its own shard, the
setting these methods were proposed for (a model fine-tuned per task); from a random
shared initialisation the "task vector" is the whole training, and sparsifying it
(TIES, DARE) costs more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs, check_init
from fastdist.combiners.evaluate import evaluate
from fastdist.combiners.exchange import no_exchange
from fastdist.errors import ConfigError
from fastdist.models.base import Model

__all__ = [
    "DARE_SCALE_GRID",
    "DENSITY_GRID",
    "SCALE_GRID",
    "TASK_ARITHMETIC_SCALE",
    "dare",
    "dare_drop",
    "dare_merge",
    "model_stock",
    "model_stock_merge",
    "model_stock_ratios",
    "slerp",
    "slerp_merge",
    "task_arithmetic",
    "task_arithmetic_merge",
    "task_vectors",
    "ties",
    "ties_merge",
    "ties_trim",
]

Segments = Sequence[tuple[int, int]] | None

# Task arithmetic's lambda without a validation set: the value Yadav et al. (2023, TIES)
# use for it (and 1 for TIES). Ilharco et al. pick it on validation data from this grid.
TASK_ARITHMETIC_SCALE = 0.4
SCALE_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, ..., 1.0
# TIES's density: the paper's k in {10, 20, 30}%, then 50% and no trimming at all.
DENSITY_GRID = (0.1, 0.2, 0.3, 0.5, 1.0)
# DARE followed by TIES's disjoint mean (whose natural lambda is 1): 0.1, 0.2, ..., 2.0.
DARE_SCALE_GRID = tuple(round(0.1 * i, 1) for i in range(1, 21))
# SLERP falls back to linear interpolation above this |cosine| (mergekit's threshold).
SLERP_DOT_THRESHOLD = 0.9995
_EPS = 1e-12


# ------------------------------------------------------------------ the NumPy merges


def task_vectors(base: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``tau_k = theta_k - base`` for every row, float64 ``(N, P)``."""
    base = np.asarray(base)
    rows = np.asarray(rows)
    if rows.ndim != 2 or base.shape != (rows.shape[1],):
        raise ValueError(f"need base (P,) and rows (N, P), got {base.shape} and {rows.shape}")
    return rows.astype(np.float64) - base.astype(np.float64)


def _whole(size: int, segments: Segments) -> Sequence[tuple[int, int]]:
    return [(0, size)] if segments is None else segments


def _apply(base: np.ndarray, scale: float, merged_tau: np.ndarray) -> np.ndarray:
    return (np.asarray(base, dtype=np.float64) + scale * merged_tau).astype(np.float32)


def task_arithmetic_merge(
    base: np.ndarray, rows: np.ndarray, scale: float = TASK_ARITHMETIC_SCALE
) -> np.ndarray:
    """Task addition (Ilharco et al. 2023, "Editing models with task arithmetic"):
    ``base + scale * sum_k tau_k``. The SUM, as in the paper: ``scale = 1/N`` gives the
    plain mean of the rows (a uniform soup), and the default 0.4 is the no-validation
    value Yadav et al. (2023) use."""
    return _apply(base, scale, task_vectors(base, rows).sum(axis=0))


def ties_trim(tau: np.ndarray, density: float, segments: Segments = None) -> np.ndarray:
    """TIES step 1, *trim*: keep the ``ceil(density * n)`` entries of largest magnitude of
    each task vector (each row; of each segment of it when ``segments`` are given), zero
    the rest. The paper's code keeps every entry at or above the magnitude of rank
    ``n - int(n * density)`` (``kthvalue``, ``>=``): ``int(n * density) + 1`` entries
    without ties, the same count except where ``density * n`` is a whole number, where
    it keeps one more. Equal magnitudes are kept lowest index first, so the count is
    exact and deterministic."""
    tau = np.asarray(tau, dtype=np.float64)
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if density == 1:
        return tau.copy()
    out = np.zeros_like(tau)
    for start, stop in _whole(tau.shape[1], segments):
        block = tau[:, start:stop]
        keep = min(stop - start, math.ceil(round(density * (stop - start), 9)))
        top = np.argsort(-np.abs(block), axis=1, kind="stable")[:, :keep]
        np.put_along_axis(out[:, start:stop], top, np.take_along_axis(block, top, 1), axis=1)
    return out


def _elect_and_merge(trimmed: np.ndarray) -> np.ndarray:
    """TIES steps 2 and 3 (Yadav et al. 2023, Algorithm 1): the elected sign
    ``gamma = sgn(sum_k trimmed_k)`` (the sign of greater total mass), then the
    *disjoint mean*: per coordinate, the mean over the task vectors whose trimmed entry
    is nonzero and has sign ``gamma`` (0 where none has). Where the sum is exactly 0 the
    paper's code elects the majority sign of all the elected signs; so does this."""
    gamma = np.sign(trimmed.sum(axis=0))
    gamma[gamma == 0] = np.sign(gamma.sum())
    agree = (np.sign(trimmed) == gamma) & (trimmed != 0)
    total = np.where(agree, trimmed, 0.0).sum(axis=0)
    count = agree.sum(axis=0)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def ties_merge(
    base: np.ndarray,
    rows: np.ndarray,
    density: float = 0.2,
    scale: float = 1.0,
    segments: Segments = None,
) -> np.ndarray:
    """TIES-Merging (Yadav et al. 2023): trim each task vector to ``density``
    (:func:`ties_trim`; over the whole vector unless ``segments``), elect a sign per
    coordinate, average the agreeing entries (disjoint mean), and add ``scale`` times
    that to the base (the paper's lambda; 1 by default, as the paper's no-validation
    setting)."""
    trimmed = ties_trim(task_vectors(base, rows), density, segments)
    return _apply(base, scale, _elect_and_merge(trimmed))


def dare_drop(tau: np.ndarray, drop: float, seed: int) -> np.ndarray:
    """DARE (Yu et al. 2024, "Language models are Super Mario", eq. 2): drop each entry
    of each task vector with probability ``drop``, rescale the survivors by
    ``1 / (1 - drop)``, so every entry keeps its expectation. Row ``k``'s mask comes from
    ``numpy.random.default_rng(SeedSequence((seed, k)))``: reproducible from ``seed``,
    independent across rows."""
    tau = np.asarray(tau, dtype=np.float64)
    if not 0 <= drop < 1:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    out = np.empty_like(tau)
    for k, row in enumerate(tau):
        rng = np.random.default_rng(np.random.SeedSequence((int(seed), k)))
        kept = rng.random(row.shape[0]) >= drop
        out[k] = np.where(kept, row / (1.0 - drop), 0.0)
    return out


def _dare_default_scale(merge: str) -> float:
    return TASK_ARITHMETIC_SCALE if merge == "linear" else 1.0


def dare_merge(
    base: np.ndarray,
    rows: np.ndarray,
    drop: float = 0.5,
    seed: int = 0,
    merge: str = "linear",
    scale: float | None = None,
    density: float = 1.0,
    segments: Segments = None,
) -> np.ndarray:
    """DARE's sparsified task vectors (:func:`dare_drop`), merged by task arithmetic
    (``merge="linear"``: ``base + scale * sum``, scale 0.4 by default) or by TIES
    (``merge="ties"``: trim to ``density``, by default 1 = no trim beyond DARE's own,
    as mergekit's dare_ties; then sign election and disjoint mean, scale 1 by default),
    the two uses of DARE in Yu et al. 2024."""
    if merge not in ("linear", "ties"):
        raise ValueError(f"merge must be 'linear' or 'ties', got {merge!r}")
    dropped = dare_drop(task_vectors(base, rows), drop, seed)
    scale = _dare_default_scale(merge) if scale is None else scale
    if merge == "linear":
        return _apply(base, scale, dropped.sum(axis=0))
    return _apply(base, scale, _elect_and_merge(ties_trim(dropped, density, segments)))


def _slerp_block(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(a @ b) / (na * nb) if na > _EPS and nb > _EPS else 1.0
    if abs(cos) > SLERP_DOT_THRESHOLD:  # (nearly) colinear, or a zero tensor: lerp
        return (1.0 - t) * a + t * b
    omega = math.acos(cos)
    return (math.sin((1.0 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)


def slerp_merge(
    a: np.ndarray, b: np.ndarray, t: float = 0.5, segments: Segments = None
) -> np.ndarray:
    """Spherical linear interpolation (Shoemake 1985) of two parameter vectors, tensor by
    tensor as mergekit: ``(sin((1-t) w) a + sin(t w) b) / sin w`` with ``w`` the angle
    between the tensors, on the parameters themselves (no base needed); linear
    interpolation where they are (nearly) colinear (|cos w| > 0.9995) or one is zero.
    Exact at the endpoints: ``t=0`` returns ``a``, ``t=1`` returns ``b``."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    if a64.ndim != 1 or a64.shape != b64.shape:
        raise ValueError(f"need two vectors of one shape, got {a64.shape} and {b64.shape}")
    if not 0 <= t <= 1:
        raise ValueError(f"t must be in [0, 1], got {t}")
    out = np.empty_like(a64)
    for start, stop in _whole(a64.shape[0], segments):
        out[start:stop] = _slerp_block(a64[start:stop], b64[start:stop], t)
    return out.astype(np.float32)


def model_stock_ratios(base: np.ndarray, rows: np.ndarray, segments: Segments = None) -> np.ndarray:
    """Model Stock's interpolation ratio per segment (Jang et al. 2024, eq. for N
    models): ``t = N cos / (1 + (N - 1) cos)``, ``cos`` the mean cosine between the
    task vectors over all pairs. ``cos`` is clipped to [0, 1] (a zero task vector
    counts as orthogonal), so ``t`` is in [0, 1]: an interpolation between the base
    and the mean, as the paper's geometry assumes."""
    tau = task_vectors(base, rows)
    n = tau.shape[0]
    if n < 2:
        raise ValueError(f"Model Stock needs at least 2 fine-tuned models, got {n}")
    pairs = np.triu_indices(n, k=1)
    ratios = []
    for start, stop in _whole(tau.shape[1], segments):
        block = tau[:, start:stop]
        norms = np.linalg.norm(block, axis=1)
        unit = np.divide(
            block, norms[:, None], out=np.zeros_like(block), where=norms[:, None] > _EPS
        )
        cos = float(np.clip((unit @ unit.T)[pairs].mean(), 0.0, 1.0))
        ratios.append(n * cos / (1.0 + (n - 1) * cos))
    return np.array(ratios)


def _model_stock(base, rows, segments: Segments) -> tuple[np.ndarray, np.ndarray]:
    ratios = model_stock_ratios(base, rows, segments)
    mean_tau = task_vectors(base, rows).mean(axis=0)
    for ratio, (start, stop) in zip(ratios, _whole(mean_tau.shape[0], segments)):
        mean_tau[start:stop] *= ratio
    return _apply(base, 1.0, mean_tau), ratios


def model_stock_merge(base: np.ndarray, rows: np.ndarray, segments: Segments = None) -> np.ndarray:
    """Model Stock (Jang et al. 2024): per segment (layer), ``t * mean_k theta_k +
    (1 - t) * base`` with ``t`` from :func:`model_stock_ratios`: the closer the fine-tunes'
    directions agree, the closer to their mean; the more they disagree, the closer to
    the base."""
    return _model_stock(base, rows, segments)[0]


# ------------------------------------------------------------------ option checks


def _real(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"combiner.{key} must be a finite number, got {value!r}")
    return float(value)


def _fraction(key: str, value: object, *, zero: bool, one: bool) -> float:
    """A number in an interval of [0, 1] (``zero``/``one``: whether that end is in)."""
    interval = f"{'[' if zero else '('}0, 1{']' if one else ')'}"
    number = None
    if not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value):
        number = float(value)
    inside = number is not None and (number > 0 or (zero and number == 0))
    if not inside or not (number < 1 or (one and number == 1)):
        raise ConfigError(f"combiner.{key} must be in {interval}, got {value!r}")
    return number


def _select(select: object) -> bool:
    if select not in (None, "val"):
        raise ConfigError(f"combiner.select must be null or 'val', got {select!r}")
    return select == "val"


def _grid(
    grid: object, default: tuple[float, ...], selecting: bool, check: Callable
) -> tuple[float, ...]:
    if grid is None:
        return default
    if not selecting:
        raise ConfigError("combiner.grid is read only with combiner.select=val")
    if isinstance(grid, str | bytes) or not hasattr(grid, "__iter__") or not list(grid):
        raise ConfigError(f"combiner.grid must be a non-empty list of numbers, got {grid!r}")
    return tuple(check("grid", value) for value in grid)


def _base_init(init: str, name: str) -> str:
    """A task vector needs the base every worker started from: independent starts have
    none (init_from loads one model into every row, so use it with init=shared)."""
    if check_init(init) == "independent":
        raise ConfigError(
            f"{name} merges task vectors from a common base: train with "
            "combiner.init=shared (and init_from=... to start from a saved model), not "
            "combiner.init=independent"
        )
    return init


def _require_base(inputs: FinalizeInputs, name: str) -> np.ndarray:
    if inputs.base is None:
        raise ConfigError(
            f"{name} merges task vectors from a common base, and these workers have none "
            "on record (independent starts, or states saved without base_params): train "
            "with combiner.init=shared or init_from=..., save_states=true"
        )
    return inputs.base


def _segments(model: Model) -> list[tuple[int, int]]:
    """``[start, stop)`` of every tensor of the model's flat layout."""
    return [model.layout.bounds(name) for name in model.layout.names]


def _choose(
    inputs: FinalizeInputs, key: str, grid: tuple[float, ...], merge_at: Callable
) -> tuple[np.ndarray, dict]:
    """The merge at the grid value of best validation accuracy (ties: lower validation
    loss, then the earlier grid value), and the ``info`` reporting the choice. Only
    ``inputs.validation`` is evaluated: the test set is never looked at."""
    x_val, y_val = inputs.validation
    merged, scores = [], []
    for value in grid:
        merged.append(merge_at(value))
        scores.append(evaluate(CombinedModel((merged[-1],)), inputs.model, x_val, y_val))
    best = min(range(len(grid)), key=lambda i: (-scores[i]["accuracy"], scores[i]["loss"], i))
    info = {
        key: grid[best],
        "grid": list(grid),
        "val_accuracy": [s["accuracy"] for s in scores],
    }
    return merged[best], info


def _combiner(
    name: str,
    finalize: Callable,
    init: str,
    selecting: bool = False,
    check_workers: Callable[[int], None] | None = None,
) -> Combiner:
    return Combiner(
        name,
        no_exchange(),
        finalize,
        init=init,
        needs_validation=selecting,
        check_workers=check_workers,
    )


def _two_workers(n: int) -> None:
    if n != 2:
        raise ConfigError(f"slerp interpolates exactly 2 workers, got {n}: set workers=2")


def _two_or_more(n: int) -> None:
    if n < 2:
        raise ConfigError(
            "model_stock needs at least 2 workers (it reads the angle between their "
            f"task vectors), got {n}"
        )


# ------------------------------------------------------------------ the combiners


def task_arithmetic(
    scale: float = TASK_ARITHMETIC_SCALE,
    select: str | None = None,
    grid: list[float] | None = None,
    init: str = "shared",
) -> Combiner:
    """Task arithmetic (Ilharco et al. 2023): ``base + scale * sum_k (theta_k - base)``,
    the sum of the workers' task vectors (``scale=1/N``: their mean). ``select=val``
    picks ``scale`` from ``grid`` (default 0, 0.05, ..., 1.0, the paper's) by
    validation accuracy and reports it as ``combiner_scale`` (with ``combiner_grid``
    and ``combiner_val_accuracy``)."""
    scale = _real("scale", scale)
    selecting = _select(select)
    grid = _grid(grid, SCALE_GRID, selecting, _real)
    init = _base_init(init, "task_arithmetic")

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        base = _require_base(inputs, "task_arithmetic")
        total = task_vectors(base, inputs.worker_params).sum(axis=0)
        if not selecting:
            return CombinedModel((_apply(base, scale, total),))
        merged, info = _choose(inputs, "scale", grid, lambda v: _apply(base, v, total))
        return CombinedModel((merged,), info=info)

    return _combiner("task_arithmetic", finalize, init, selecting)


def _density(key: str, value: object) -> float:
    return _fraction(key, value, zero=False, one=True)


def ties(
    density: float = 0.2,
    scale: float = 1.0,
    select: str | None = None,
    grid: list[float] | None = None,
    per_tensor: bool = False,
    init: str = "shared",
) -> Combiner:
    """TIES-Merging (Yadav et al. 2023): trim each worker's task vector to its
    ``density`` fraction of largest entries (over the whole vector, as the paper;
    ``per_tensor``: per tensor, as mergekit), elect a sign per parameter, average the
    entries that agree with it, add ``scale`` times that to the base. ``select=val``
    picks ``density`` from ``grid`` (default 0.1, 0.2, 0.3, 0.5, 1.0) by validation
    accuracy (``combiner_density``, ``combiner_grid``, ``combiner_val_accuracy``)."""
    density = _density("density", density)
    scale = _real("scale", scale)
    selecting = _select(select)
    grid = _grid(grid, DENSITY_GRID, selecting, _density)
    if not isinstance(per_tensor, bool):
        raise ConfigError(f"combiner.per_tensor must be true or false, got {per_tensor!r}")
    init = _base_init(init, "ties")

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        base = _require_base(inputs, "ties")
        tau = task_vectors(base, inputs.worker_params)
        segments = _segments(inputs.model) if per_tensor else None

        def merge_at(d: float) -> np.ndarray:
            return _apply(base, scale, _elect_and_merge(ties_trim(tau, d, segments)))

        if not selecting:
            return CombinedModel((merge_at(density),))
        merged, info = _choose(inputs, "density", grid, merge_at)
        return CombinedModel((merged,), info=info)

    return _combiner("ties", finalize, init, selecting)


def dare(
    drop: float = 0.5,
    merge: str = "linear",
    scale: float | None = None,
    density: float = 1.0,
    seed_offset: int = 0,
    select: str | None = None,
    grid: list[float] | None = None,
    init: str = "shared",
    name: str = "dare",
) -> Combiner:
    """DARE (Yu et al. 2024): drop each entry of each worker's task vector with
    probability ``drop``, rescale the rest by ``1/(1 - drop)``, then merge by task
    arithmetic (``merge=linear``; ``scale`` 0.4 unless set) or by TIES (``merge=ties``,
    ``conf/combiner/dare_ties.yaml``: trim to ``density``, 1 = none, elect signs,
    disjoint mean; ``scale`` 1 unless set). The masks are drawn from the run's seed
    plus ``seed_offset``: the same run merges the same way. ``select=val`` picks
    ``scale`` from ``grid`` (default: task arithmetic's 0..1 for linear, 0.1..2.0 for
    ties) by validation accuracy (``combiner_scale``, ...).

    ``drop`` is 0.5 by default (mergekit's usual density), not the paper's 0.9: DARE
    works when the task vectors are small fine-tuning deltas, and 0.9 erases a worker
    trained from a random shared start (the tiny synthetic run: test accuracy 0.27
    against 0.90 at 0.5). Set ``drop=0.9`` for fine-tunes of an ``init_from`` model."""
    drop = _fraction("drop", drop, zero=True, one=False)
    if merge not in ("linear", "ties"):
        raise ConfigError(f"combiner.merge must be 'linear' or 'ties', got {merge!r}")
    scale = _dare_default_scale(merge) if scale is None else _real("scale", scale)
    density = _density("density", density)
    if isinstance(seed_offset, bool) or not isinstance(seed_offset, int) or seed_offset < 0:
        raise ConfigError(f"combiner.seed_offset must be an integer >= 0, got {seed_offset!r}")
    selecting = _select(select)
    default_grid = SCALE_GRID if merge == "linear" else DARE_SCALE_GRID
    grid = _grid(grid, default_grid, selecting, _real)
    name = str(name)
    init = _base_init(init, name)

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        base = _require_base(inputs, name)
        dropped = dare_drop(
            task_vectors(base, inputs.worker_params), drop, inputs.seed + seed_offset
        )
        merged_tau = (
            dropped.sum(axis=0)
            if merge == "linear"
            else _elect_and_merge(ties_trim(dropped, density))
        )
        if not selecting:
            return CombinedModel((_apply(base, scale, merged_tau),))
        merged, info = _choose(inputs, "scale", grid, lambda v: _apply(base, v, merged_tau))
        return CombinedModel((merged,), info=info)

    return _combiner(name, finalize, init, selecting)


def slerp(t: float = 0.5, init: str = "shared") -> Combiner:
    """SLERP of exactly two workers' parameters, tensor by tensor (as mergekit; linear
    where the tensors are nearly colinear): ``t=0`` is worker 0, ``t=1`` worker 1. It
    interpolates the parameters themselves, so it needs no base; like weight averaging,
    it only makes sense for models that share a basin (a shared start)."""
    t = _fraction("t", t, zero=True, one=True)
    init = check_init(init)

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        rows = inputs.worker_params
        _two_workers(len(rows))
        return CombinedModel((slerp_merge(rows[0], rows[1], t, _segments(inputs.model)),))

    return _combiner("slerp", finalize, init, check_workers=_two_workers)


def model_stock(init: str = "shared") -> Combiner:
    """Model Stock (Jang et al. 2024): per tensor, interpolate between the base and the
    workers' mean by ``t = N cos / (1 + (N - 1) cos)``, ``cos`` the mean pairwise cosine
    of their task vectors. Needs 2 workers or more; ``combiner_ratio`` reports ``t``
    per tensor."""
    init = _base_init(init, "model_stock")

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        base = _require_base(inputs, "model_stock")
        rows = inputs.worker_params
        _two_or_more(len(rows))
        merged, ratios = _model_stock(base, rows, _segments(inputs.model))
        names = inputs.model.layout.names
        return CombinedModel((merged,), info={"ratio": dict(zip(names, map(float, ratios)))})

    return _combiner("model_stock", finalize, init, check_workers=_two_or_more)
