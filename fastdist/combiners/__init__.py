"""Combiners: how the workers' results become one model. One registry drives the
Hydra configs (``conf/combiner/<name>.yaml``) and the parametrised tests."""

from fastdist.combiners.averaging import grad_avg, weight_avg
from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs, Sync

REGISTRY = {
    "grad_avg": grad_avg,
    "weight_avg": weight_avg,
}

__all__ = [
    "REGISTRY",
    "CombinedModel",
    "Combiner",
    "FinalizeInputs",
    "Sync",
    "grad_avg",
    "weight_avg",
]
