"""Permutation-aligned weight averaging (Ainsworth et al. 2022, "Git Re-Basin": weight
matching).

Hidden units of an MLP can be permuted without changing the function it computes, so
two independently initialised networks may solve the task with their units in
different orders, and averaging them unit by unit mixes unrelated features. Weight
matching permutes each worker's hidden units to best match a reference worker (a
linear assignment per layer, solved with the Hungarian method and iterated over the
layers until no permutation improves), then averages.

Convention: ``perms[j]`` is the permutation of hidden layer ``j + 1`` (the output of
layer ``j``): unit ``a`` of the aligned network is unit ``perms[j][a]`` of the original.
"""

from __future__ import annotations

import numpy as np

from fastdist.combiners.averaging import mean_of_rows
from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs, Sync, check_init
from fastdist.errors import ConfigError
from fastdist.model import ParamLayout

__all__ = ["permute_hidden", "weight_matching", "aligned_avg"]


def permute_hidden(layout: ParamLayout, flat: np.ndarray, perms: list[np.ndarray]) -> np.ndarray:
    """A copy of ``flat`` with hidden layer ``j + 1``'s units reordered by ``perms[j]``;
    the network computes exactly the same function."""
    if len(perms) != layout.n_layers - 1:
        raise ValueError(f"need {layout.n_layers - 1} permutations, got {len(perms)}")
    out = flat.copy()
    for layer in range(layout.n_layers):
        w = layout.weight(flat, layer)
        if layer > 0:
            w = w[perms[layer - 1], :]  # inputs come from the permuted layer below
        if layer < layout.n_layers - 1:
            w = w[:, perms[layer]]
            layout.bias(out, layer)[:] = layout.bias(flat, layer)[perms[layer]]
        layout.weight(out, layer)[:] = w
    return out


def weight_matching(
    layout: ParamLayout,
    reference: np.ndarray,
    other: np.ndarray,
    max_iter: int = 100,
    seed: int = 0,
) -> list[np.ndarray]:
    """Permutations that map ``other``'s hidden units onto ``reference``'s, maximising
    the summed inner product of all weights (coordinate ascent over layers)."""
    from scipy.optimize import linear_sum_assignment

    n_hidden = layout.n_layers - 1
    perms = [np.arange(layout.sizes[j + 1]) for j in range(n_hidden)]
    if n_hidden == 0:
        return perms
    rng = np.random.default_rng(seed)
    layers = range(layout.n_layers)
    ref = [layout.weight(reference, k).astype(np.float64) for k in layers]
    ref_b = [layout.bias(reference, k).astype(np.float64) for k in layers]
    oth = [layout.weight(other, k).astype(np.float64) for k in layers]
    oth_b = [layout.bias(other, k).astype(np.float64) for k in layers]
    for _ in range(max_iter):
        improved = False
        for j in rng.permutation(n_hidden):
            # Units of hidden layer j+1: incoming weights (layer j, its inputs permuted by
            # the layer below), their biases, and outgoing weights (layer j+1, its
            # outputs permuted by the layer above).
            w_in = oth[j] if j == 0 else oth[j][perms[j - 1], :]
            w_out = oth[j + 1] if j + 1 == n_hidden else oth[j + 1][:, perms[j + 1]]
            cost = ref[j].T @ w_in + np.outer(ref_b[j], oth_b[j]) + ref[j + 1] @ w_out.T
            _, best = linear_sum_assignment(cost, maximize=True)
            old = cost[np.arange(len(best)), perms[j]].sum()
            new = cost[np.arange(len(best)), best].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[j] = best
                improved = True
        if not improved:
            break
    return perms


def aligned_avg(init: str = "independent", reference: int = 0) -> Combiner:
    """Align every worker's hidden units to worker ``reference``, then average."""
    if not isinstance(reference, int) or reference < 0:
        raise ConfigError(f"combiner.reference must be a worker index >= 0, got {reference!r}")

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        rows = inputs.worker_params
        if reference >= len(rows):
            raise ConfigError(f"combiner.reference={reference} but there are {len(rows)} workers")
        ref = rows[reference]
        aligned = [
            row
            if k == reference
            else permute_hidden(
                inputs.layout, row, weight_matching(inputs.layout, ref, row, seed=inputs.seed)
            )
            for k, row in enumerate(rows)
        ]
        return CombinedModel((mean_of_rows(np.stack(aligned)),))

    return Combiner("aligned_avg", Sync.NONE, finalize, init=check_init(init))
