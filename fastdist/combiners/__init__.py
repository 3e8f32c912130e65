"""Combiner records: how the workers' results become one model.

The registry is the set of ``conf/combiner/<name>.yaml`` files (each names its factory
in ``_target_``): :data:`REGISTRY` maps name -> factory path, and the parametrised
tests, the CLI and this module's names all read it. ``fastdist.combiners.<name>`` is
the factory of every shipped config: the factory itself where the config just names it
(``grad_avg``), else that factory with the config's preset options (``fedadam``:
``federated`` with ``outer="adam"``, ...), which keyword arguments override.

The factories and the registry load on first use: every worker imports
``fastdist.combiners.exchange`` (for its exchange), which runs this file first, and
importing every combiner (SciPy's assignment solver for alignment, the YAML registry)
would add about 40 ms to each worker's start-up.
"""

import functools

from fastdist.combiners.base import (
    CombinedModel,
    Combiner,
    FinalizeInputs,
    check_init,
    require_shared,
)

# Imported now: each shares its name with its module, and a module imported later
# would otherwise shadow the factory (``from fastdist.combiners import ensemble``).
from fastdist.combiners.ensemble import ensemble
from fastdist.combiners.exchange import Exchange, ExchangeView, Sync, WorkerExchange
from fastdist.combiners.hogwild import hogwild

__all__ = [
    "REGISTRY",
    "CombinedModel",
    "Combiner",
    "Exchange",
    "ExchangeView",
    "FinalizeInputs",
    "Sync",
    "WorkerExchange",
    "check_init",
    "require_shared",
    "ensemble",
    "hogwild",
    # and a factory per shipped config, by its name (__dir__ lists them)
]


def _factory(name: str):
    """The factory of the shipped config ``name``, with its preset options."""
    from fastdist.conf import preset, resolve

    factory = resolve(_registry()[name], f"combiner {name}")
    options = preset("combiner", name)
    if getattr(factory, "__name__", None) == name and not options:
        return factory
    made = functools.partial(factory, **options)
    made.__doc__ = f"conf/combiner/{name}.yaml: {factory.__name__}({options}) (see its doc)"
    return made


def _registry() -> dict[str, str]:
    from fastdist.conf import registered

    return registered("combiner")


def __getattr__(name: str):
    if name == "REGISTRY":
        value = _registry()
    elif name in _registry():
        value = _factory(name)
    else:
        raise AttributeError(f"module 'fastdist.combiners' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *_registry()})
