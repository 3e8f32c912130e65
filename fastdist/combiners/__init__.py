"""Combiners: how the workers' results become one model. One registry drives the
Hydra configs (``conf/combiner/<name>.yaml``) and the parametrised tests."""

from fastdist.combiners.averaging import grad_avg, local_sgd, weight_avg
from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs, Sync
from fastdist.combiners.ensemble import ensemble
from fastdist.combiners.hogwild import hogwild
from fastdist.combiners.soups import soup_greedy, soup_uniform

REGISTRY = {
    "grad_avg": grad_avg,
    "weight_avg": weight_avg,
    "local_sgd": local_sgd,
    "ensemble": ensemble,
    "hogwild": hogwild,
    "soup_uniform": soup_uniform,
    "soup_greedy": soup_greedy,
}

__all__ = [
    "REGISTRY",
    "CombinedModel",
    "Combiner",
    "FinalizeInputs",
    "Sync",
    "ensemble",
    "grad_avg",
    "hogwild",
    "local_sgd",
    "soup_greedy",
    "soup_uniform",
    "weight_avg",
]
