"""The run's reduction from its config: ``aggregate=``, ``compress=`` and
``byzantine.*`` (:mod:`fastdist.combiners.reduction`), attached to the combiner."""

from __future__ import annotations

from omegaconf import OmegaConf

from fastdist.combiners.attacks import byzantine
from fastdist.combiners.base import Combiner
from fastdist.combiners.compression import powersgd_matrices
from fastdist.combiners.reduction import Reduction, with_reduction
from fastdist.errors import ConfigError
from fastdist.models.base import Model
from fastdist.run.records import build_aggregate, build_compression

__all__ = ["build_reduction", "reducing", "reduction_metrics", "under_attack"]


def build_reduction(cfg, workers: int, model: Model | None = None, trusted: bool = True):
    """The :class:`Reduction` the config describes for ``workers`` global workers
    (PowerSGD's matrices once the ``model`` is known)."""
    aggregate = build_aggregate(cfg.get("aggregate"), trusted)
    compression = build_compression(cfg.get("compress"), trusted)
    node = cfg.get("byzantine")
    options = {} if node is None else OmegaConf.to_container(node, resolve=True)
    try:
        attackers = byzantine(**options, n_workers=int(workers), seed=int(cfg.seed))
    except TypeError as exc:
        raise ConfigError(f"bad byzantine settings: {str(exc).splitlines()[0]}") from None
    matrices = ()
    if model is not None and compression.kind == "powersgd":
        matrices = powersgd_matrices(model.layout, compression.rank)
    return Reduction(
        aggregate=aggregate,
        compression=compression,
        byzantine=attackers,
        matrices=tuple(matrices),
        seed=int(cfg.seed),
        workers=int(workers),
    )


def reducing(cfg, combiner: Combiner, workers: int, mpi: bool, model: Model | None = None):
    """``combiner`` with the config's reduction attached (checked: one-line errors)."""
    return with_reduction(combiner, build_reduction(cfg, workers, model), workers, mpi)


def reduction_metrics(combiner: Combiner) -> dict:
    """metrics.json's ``aggregate``, ``compress`` and ``byzantine`` keys."""
    reduction = combiner.exchange.reduction
    if reduction is None:
        return {"aggregate": "mean", "compress": "none", "byzantine": None}
    return reduction.record()


def under_attack(combiner: Combiner) -> str:
    """The summary line's note on attackers ("" without any): which workers attacked,
    how, and whether the rule was built to resist them."""
    reduction = combiner.exchange.reduction
    if reduction is None or not reduction.byzantine.active:
        return ""
    note = f"  [{reduction.byzantine.describe()}; aggregate={reduction.aggregate.rule}"
    if reduction.aggregate.rule == "mean":
        note += ": the mean is not robust to them"
    return note + "]"
