"""Combiner records: how the workers' results become one model.

The registry is the set of ``conf/combiner/<name>.yaml`` files (each names its factory
in ``_target_``): :data:`REGISTRY` maps name -> factory path, and the parametrised
tests and the CLI both read it.

The built-in factories and the registry load on first use: every worker imports
``fastdist.combiners.base`` (for the sync schedule), which runs this file first, and
importing every combiner (SciPy's assignment solver for alignment, the YAML registry)
would add about 40 ms to each worker's start-up.
"""

import importlib

from fastdist.combiners.base import (
    CombinedModel,
    Combiner,
    FinalizeInputs,
    Sync,
    SyncSchedule,
    check_init,
    require_shared,
)

# Imported now: each shares its name with its module, and a module imported later
# would otherwise shadow the factory (``from fastdist.combiners import ensemble``).
from fastdist.combiners.ensemble import ensemble
from fastdist.combiners.hogwild import hogwild

_FACTORIES = {
    "aligned_avg": "fastdist.combiners.alignment",
    "fisher_avg": "fastdist.combiners.fisher",
    "grad_avg": "fastdist.combiners.averaging",
    "local_sgd": "fastdist.combiners.averaging",
    "soup_greedy": "fastdist.combiners.soups",
    "soup_uniform": "fastdist.combiners.soups",
    "weight_avg": "fastdist.combiners.averaging",
}

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
    "ensemble",
    "hogwild",
    *sorted(_FACTORIES),
]


def __getattr__(name: str):
    if name == "REGISTRY":
        from fastdist.conf import registered

        value = registered("combiner")
    elif name in _FACTORIES:
        value = getattr(importlib.import_module(_FACTORIES[name]), name)
    else:
        raise AttributeError(f"module 'fastdist.combiners' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
