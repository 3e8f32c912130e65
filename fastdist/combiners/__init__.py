"""Combiners: how the workers' results become one model. One registry drives the
Hydra configs (``conf/combiner/<name>.yaml``) and the parametrised tests."""

from fastdist.combiners.alignment import aligned_avg
from fastdist.combiners.averaging import grad_avg, local_sgd, weight_avg
from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs, Sync
from fastdist.combiners.ensemble import ensemble
from fastdist.combiners.fisher import fisher_avg
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
    "fisher_avg": fisher_avg,
    "aligned_avg": aligned_avg,
}

__all__ = [
    "REGISTRY",
    "CombinedModel",
    "Combiner",
    "FinalizeInputs",
    "Sync",
    "aligned_avg",
    "ensemble",
    "fisher_avg",
    "grad_avg",
    "hogwild",
    "local_sgd",
    "soup_greedy",
    "soup_uniform",
    "weight_avg",
]
