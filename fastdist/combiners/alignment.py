"""Permutation-aligned weight averaging (Ainsworth et al. 2022, "Git Re-Basin": weight
matching).

Hidden units (or channels) can be permuted without changing the function a network
computes, so two independently initialised networks may solve the task with their
units in different orders, and averaging them unit by unit mixes unrelated features.
Weight matching permutes each worker's units to best match a reference worker (a
linear assignment per permutation, solved with the Hungarian method, iterated over the
permutations in random order until none improves), then averages.

Which axes may be permuted is the model's business: its record's
:meth:`~fastdist.models.base.Model.permutation_spec` lists, per permutation, the
``(tensor, axis)`` pairs it reorders. Convention: ``perms[j]`` is the permutation named
``spec.names[j]``; unit ``a`` of the permuted network is unit ``perms[j][a]`` of the
original, so every listed axis is indexed with ``perms[j]``.
"""

from __future__ import annotations

import numpy as np

from fastdist.combiners.averaging import weighted_mean_of_rows
from fastdist.combiners.base import (
    CombinedModel,
    Combiner,
    FinalizeInputs,
    check_init,
)
from fastdist.combiners.exchange import no_exchange
from fastdist.errors import ConfigError
from fastdist.models.base import Model, PermutationSpec

__all__ = ["permute", "weight_matching", "aligned_avg", "require_permutation_spec"]


def require_permutation_spec(model: Model) -> PermutationSpec:
    spec = model.permutation_spec()
    if spec is None:
        raise ConfigError(
            f"aligned_avg needs to know which axes of model {model.name} may be permuted "
            "(its record declares no permutation_spec)"
        )
    return spec


def _perm_size(model: Model, spec: PermutationSpec, perm: str) -> int:
    tensor, axis = spec.axes(perm)[0]
    return model.layout.shape(tensor)[axis]


def _check_perms(model: Model, spec: PermutationSpec, perms: list) -> list[np.ndarray]:
    if len(perms) != len(spec.names):
        raise ValueError(f"need {len(spec.names)} permutations, got {len(perms)}")
    checked = []
    for j, perm in enumerate(perms):
        perm = np.asarray(perm)
        width = _perm_size(model, spec, spec.names[j])
        if perm.shape != (width,) or not np.array_equal(np.sort(perm), np.arange(width)):
            raise ValueError(
                f"perms[{j}] is not a permutation of the {width} units of {spec.names[j]}"
            )
        checked.append(perm)
    return checked


def _permuted(
    tensor: np.ndarray, axes: dict[int, str], perms: dict[str, np.ndarray], skip: int | None
) -> np.ndarray:
    for axis, perm in axes.items():
        if axis != skip:
            tensor = np.take(tensor, perms[perm], axis=axis)
    return tensor


def permute(model: Model, flat: np.ndarray, perms: list[np.ndarray]) -> np.ndarray:
    """A copy of ``flat`` with every permutation of the model's spec applied; the
    network computes exactly the same function."""
    spec = require_permutation_spec(model)
    by_name = dict(zip(spec.names, _check_perms(model, spec, perms)))
    out = flat.copy()
    layout = model.layout
    for tensor in layout.names:
        axes = spec.of_tensor(tensor)
        if axes:
            layout.view(out, tensor)[...] = _permuted(
                layout.view(flat, tensor), axes, by_name, None
            )
    return out


def weight_matching(
    model: Model,
    reference_flat: np.ndarray,
    other_flat: np.ndarray,
    max_iter: int = 100,
    seed: int = 0,
) -> list[np.ndarray]:
    """Permutations that map ``other_flat``'s units onto ``reference_flat``'s:
    ``permute(model, other_flat, perms)`` is the aligned network.

    Coordinate ascent on the summed inner product of all parameters: for each
    permutation (in a random order per sweep) the similarity of reference unit ``a``
    and other unit ``b`` is the inner product of every tensor slice the permutation
    touches (with the other permutations' current values applied to the other axes),
    and the best permutation is a linear assignment. Sweeps stop when none improves,
    or after ``max_iter``. Computed in float64.
    """
    from scipy.optimize import linear_sum_assignment

    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    spec = require_permutation_spec(model)
    names = spec.names
    perms = {p: np.arange(_perm_size(model, spec, p)) for p in names}
    if not names:
        return []
    layout = model.layout
    ref = {t: layout.view(reference_flat, t).astype(np.float64) for t in layout.names}
    oth = {t: layout.view(other_flat, t).astype(np.float64) for t in layout.names}
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        improved = False
        for j in rng.permutation(len(names)):
            p = names[j]
            n = len(perms[p])
            # cost[a, b]: reference unit a against other unit b of permutation p.
            cost = np.zeros((n, n))
            for tensor, axis in spec.axes(p):
                w_ref = np.moveaxis(ref[tensor], axis, 0).reshape(n, -1)
                w_oth = _permuted(oth[tensor], spec.of_tensor(tensor), perms, skip=axis)
                cost += w_ref @ np.moveaxis(w_oth, axis, 0).reshape(n, -1).T
            _, best = linear_sum_assignment(cost, maximize=True)
            units = np.arange(n)
            old, new = cost[units, perms[p]].sum(), cost[units, best].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[p] = best
                improved = True
        if not improved:
            break
    return [perms[p] for p in names]


def aligned_avg(init: str = "independent", reference: int = 0) -> Combiner:
    """Align every worker's units to worker ``reference`` (weight matching), then
    average the aligned parameter vectors (in float64, weighted by samples seen exactly
    as ``weight_avg``: the plain mean unless a worker failed and the others went on).

    ``info["units_moved"]`` reports, per worker, how many units alignment moved.
    """
    if isinstance(reference, bool) or not isinstance(reference, int) or reference < 0:
        raise ConfigError(f"combiner.reference must be a worker index >= 0, got {reference!r}")
    init = check_init(init)

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        rows, model = inputs.worker_params, inputs.model
        if reference >= len(rows):
            raise ConfigError(f"combiner.reference={reference} but there are {len(rows)} workers")
        aligned, moved = [], []
        for k, row in enumerate(rows):
            if k == reference:
                aligned.append(row)
                moved.append(0)
                continue
            perms = weight_matching(model, rows[reference], row, seed=inputs.seed + k)
            aligned.append(permute(model, row, perms))
            moved.append(int(sum((p != np.arange(len(p))).sum() for p in perms)))
        mean = weighted_mean_of_rows(np.stack(aligned), inputs.samples_seen)
        return CombinedModel((mean,), info={"units_moved": moved})

    return Combiner(
        "aligned_avg",
        no_exchange(),
        finalize,
        init=init,
        check_model=require_permutation_spec,
    )
