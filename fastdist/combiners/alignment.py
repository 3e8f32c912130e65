"""Permutation-aligned weight averaging (Ainsworth et al. 2022, "Git Re-Basin": weight
matching).

Hidden units of an MLP can be permuted without changing the function it computes, so
two independently initialised networks may solve the task with their units in
different orders, and averaging them unit by unit mixes unrelated features. Weight
matching permutes each worker's hidden units to best match a reference worker (a
linear assignment per hidden layer, solved with the Hungarian method, iterated over
the layers in random order until no permutation improves), then averages.

Convention: ``perms[j]`` is the permutation of hidden layer ``j + 1`` (the output of
layer ``j``): unit ``a`` of the permuted network is unit ``perms[j][a]`` of the original.
So ``perms[j]`` reorders the columns of ``w{j}``, the entries of ``b{j}`` and the rows
of ``w{j+1}``.
"""

from __future__ import annotations

import numpy as np

from fastdist.combiners.averaging import weighted_mean_of_rows
from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs, Sync, check_init
from fastdist.errors import ConfigError
from fastdist.model import ParamLayout

__all__ = ["permute_hidden", "weight_matching", "aligned_avg"]


def _check_perms(layout: ParamLayout, perms: list[np.ndarray]) -> list[np.ndarray]:
    if len(perms) != layout.n_layers - 1:
        raise ValueError(f"need {layout.n_layers - 1} permutations, got {len(perms)}")
    checked = []
    for j, perm in enumerate(perms):
        perm = np.asarray(perm)
        width = layout.sizes[j + 1]
        if perm.shape != (width,) or not np.array_equal(np.sort(perm), np.arange(width)):
            raise ValueError(f"perms[{j}] is not a permutation of the {width} units of layer {j}")
        checked.append(perm)
    return checked


def permute_hidden(layout: ParamLayout, flat: np.ndarray, perms: list[np.ndarray]) -> np.ndarray:
    """A copy of ``flat`` with hidden layer ``j + 1``'s units reordered by ``perms[j]``
    (columns of ``w{j}``, entries of ``b{j}``, rows of ``w{j+1}``); the network computes
    exactly the same function."""
    perms = _check_perms(layout, perms)
    out = flat.copy()
    for layer in range(layout.n_layers):
        w = layout.weight(flat, layer)
        if layer > 0:
            w = w[perms[layer - 1], :]  # its inputs come from the permuted layer below
        if layer < layout.n_layers - 1:
            w = w[:, perms[layer]]
            layout.bias(out, layer)[:] = layout.bias(flat, layer)[perms[layer]]
        layout.weight(out, layer)[:] = w
    return out


def weight_matching(
    layout: ParamLayout,
    reference_flat: np.ndarray,
    other_flat: np.ndarray,
    max_iter: int = 100,
    seed: int = 0,
) -> list[np.ndarray]:
    """Permutations that map ``other_flat``'s hidden units onto ``reference_flat``'s:
    ``permute_hidden(layout, other_flat, perms)`` is the aligned network.

    Coordinate ascent on the summed inner product of all weights and biases: for each
    hidden layer (in a random order per sweep) the similarity of reference unit ``a``
    and other unit ``b`` is the inner product of everything touching them (incoming
    weights, bias, outgoing weights, with the neighbouring layers' current permutations
    applied), and the best permutation is a linear assignment. Sweeps stop when none
    improves, or after ``max_iter``. Computed in float64.
    """
    from scipy.optimize import linear_sum_assignment

    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    n_hidden = layout.n_layers - 1
    perms = [np.arange(layout.sizes[j + 1]) for j in range(n_hidden)]
    if n_hidden == 0:
        return perms
    rng = np.random.default_rng(seed)
    layers = range(layout.n_layers)
    ref = [layout.weight(reference_flat, k).astype(np.float64) for k in layers]
    ref_b = [layout.bias(reference_flat, k).astype(np.float64) for k in layers]
    oth = [layout.weight(other_flat, k).astype(np.float64) for k in layers]
    oth_b = [layout.bias(other_flat, k).astype(np.float64) for k in layers]
    for _ in range(max_iter):
        improved = False
        for j in rng.permutation(n_hidden):
            # cost[a, b]: reference unit a against other unit b of hidden layer j + 1.
            w_in = oth[j] if j == 0 else oth[j][perms[j - 1], :]
            w_out = oth[j + 1] if j + 1 == n_hidden else oth[j + 1][:, perms[j + 1]]
            cost = ref[j].T @ w_in + np.outer(ref_b[j], oth_b[j]) + ref[j + 1] @ w_out.T
            _, best = linear_sum_assignment(cost, maximize=True)
            units = np.arange(len(best))
            old, new = cost[units, perms[j]].sum(), cost[units, best].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[j] = best
                improved = True
        if not improved:
            break
    return perms


def aligned_avg(init: str = "independent", reference: int = 0) -> Combiner:
    """Align every worker's hidden units to worker ``reference`` (weight matching), then
    average the aligned parameter vectors (in float64, weighted by samples seen exactly
    as ``weight_avg``: the plain mean unless a worker failed and the others went on).

    ``info["units_moved"]`` reports, per worker, how many hidden units alignment moved.
    """
    if isinstance(reference, bool) or not isinstance(reference, int) or reference < 0:
        raise ConfigError(f"combiner.reference must be a worker index >= 0, got {reference!r}")
    init = check_init(init)

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        rows, layout = inputs.worker_params, inputs.layout
        if reference >= len(rows):
            raise ConfigError(f"combiner.reference={reference} but there are {len(rows)} workers")
        aligned, moved = [], []
        for k, row in enumerate(rows):
            if k == reference:
                aligned.append(row)
                moved.append(0)
                continue
            perms = weight_matching(layout, rows[reference], row, seed=inputs.seed + k)
            aligned.append(permute_hidden(layout, row, perms))
            moved.append(int(sum((p != np.arange(len(p))).sum() for p in perms)))
        mean = weighted_mean_of_rows(np.stack(aligned), inputs.samples_seen)
        return CombinedModel((mean,), info={"units_moved": moved})

    return Combiner("aligned_avg", Sync.NONE, finalize, init=init)
