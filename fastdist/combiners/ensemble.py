"""Output ensembling: keep every worker's model, average their predictions."""

from __future__ import annotations

from fastdist.combiners.base import (
    CombinedModel,
    Combiner,
    FinalizeInputs,
    check_init,
)
from fastdist.combiners.exchange import no_exchange
from fastdist.errors import ConfigError

__all__ = ["ensemble"]


def ensemble(average: str = "probs", init: str = "shared") -> Combiner:
    """Workers train independently; the predictor averages the members' softmax
    probabilities (``average: probs``) or their logits (``average: logits``, i.e. a
    geometric mean of the probabilities, renormalised)."""
    if average not in ("probs", "logits"):
        raise ConfigError(f"combiner.average must be 'probs' or 'logits', got {average!r}")

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        members = tuple(row.copy() for row in inputs.worker_params)
        return CombinedModel(members, average=average)

    return Combiner("ensemble", no_exchange(), finalize, init=check_init(init))
