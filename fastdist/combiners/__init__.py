"""Combiner records: how the workers' results become one model.

The registry is the set of ``conf/combiner/<name>.yaml`` files (each names its factory
in ``_target_``): :data:`REGISTRY` maps name -> factory path, and the parametrised
tests and the CLI both read it.
"""

from fastdist.combiners.alignment import aligned_avg
from fastdist.combiners.averaging import grad_avg, local_sgd, weight_avg
from fastdist.combiners.base import (
    CombinedModel,
    Combiner,
    FinalizeInputs,
    Sync,
    SyncSchedule,
    check_init,
    require_shared,
)
from fastdist.combiners.ensemble import ensemble
from fastdist.combiners.fisher import fisher_avg
from fastdist.combiners.hogwild import hogwild
from fastdist.combiners.soups import soup_greedy, soup_uniform
from fastdist.conf import registered

REGISTRY = registered("combiner")

__all__ = [
    "REGISTRY",
    "CombinedModel",
    "Combiner",
    "FinalizeInputs",
    "Sync",
    "SyncSchedule",
    "check_init",
    "require_shared",
    # the built-in factories, for use from Python
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
