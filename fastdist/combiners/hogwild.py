"""Hogwild! (Niu et al. 2011): lock-free asynchronous SGD on one shared vector.

Every worker reads the shared parameters, computes a gradient on its own batch and
writes its update straight into the shared vector, with no lock and no barrier. Updates
race: one worker's write may overwrite part of another's, and a forward pass may read a
half-updated vector. That is the method (sparse or small updates collide rarely), and
it makes results depend on timing: the same seed does NOT give the same parameters
twice. Each worker keeps its own momentum buffer.
"""

from __future__ import annotations

from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs, require_shared
from fastdist.combiners.exchange import lock_free

__all__ = ["hogwild"]


def _shared_row(inputs: FinalizeInputs) -> CombinedModel:
    return CombinedModel((inputs.worker_params[0].copy(),))


def hogwild(init: str = "shared") -> Combiner:
    return Combiner(
        "hogwild",
        lock_free(),
        _shared_row,
        init=require_shared(init, "hogwild"),
        deterministic=False,
    )
