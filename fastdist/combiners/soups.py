"""Model soups (Wortsman et al. 2022): average the weights of models trained from one
initialisation, all of them (uniform) or greedily, keeping a model only if it does not
lower held-out accuracy. Held-out means the validation split carved from the training
data: the test set is never looked at."""

from __future__ import annotations

import numpy as np

from fastdist.combiners.averaging import mean_of_rows
from fastdist.combiners.base import (
    CombinedModel,
    Combiner,
    FinalizeInputs,
    check_init,
)
from fastdist.combiners.evaluate import evaluate
from fastdist.combiners.exchange import no_exchange

__all__ = ["best_member", "soup_uniform", "soup_greedy", "greedy_soup_members"]


def _accuracy(inputs: FinalizeInputs, params: np.ndarray) -> float:
    x_val, y_val = inputs.validation
    return evaluate(CombinedModel((params,)), inputs.model, x_val, y_val)["accuracy"]


def _scores(inputs: FinalizeInputs) -> list[float]:
    return [_accuracy(inputs, row) for row in inputs.worker_params]


def greedy_soup_members(inputs: FinalizeInputs) -> list[int]:
    """Workers in the greedy soup, in the order they were added."""
    rows = inputs.worker_params
    scores = _scores(inputs)
    order = sorted(range(len(rows)), key=lambda k: (-scores[k], k))
    chosen = [order[0]]
    best = scores[order[0]]
    for k in order[1:]:
        candidate = _accuracy(inputs, mean_of_rows(rows[chosen + [k]]))
        if candidate >= best:
            chosen.append(k)
            best = candidate
    return chosen


def soup_uniform(init: str = "shared") -> Combiner:
    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        return CombinedModel((mean_of_rows(inputs.worker_params),))

    return Combiner("soup_uniform", no_exchange(), finalize, init=check_init(init))


def soup_greedy(init: str = "shared") -> Combiner:
    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        chosen = greedy_soup_members(inputs)
        return CombinedModel((mean_of_rows(inputs.worker_params[chosen]),), info={"soup": chosen})

    return Combiner(
        "soup_greedy",
        no_exchange(),
        finalize,
        init=check_init(init),
        needs_validation=True,
    )


def best_member(init: str = "shared") -> Combiner:
    """The single worker with the best validation accuracy (the lowest rank on a tie):
    the "best individual model" a soup is measured against (Wortsman et al. 2022), chosen
    on the validation split as the soups are. ``info["best"]``: its rank."""

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        scores = _scores(inputs)
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))
        return CombinedModel((inputs.worker_params[best].copy(),), info={"best": best})

    return Combiner(
        "best_member",
        no_exchange(),
        finalize,
        init=check_init(init),
        needs_validation=True,
    )
