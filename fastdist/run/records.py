"""Building the records a config names: combiner, model, optimizer, schedule,
partition, aggregation rule and compressor.

A record is whatever the factory in its node's ``_target_`` returns; it must be of the
group's record type. Configs composed from the user's own command line may name any
factory (that is how a researcher plugs in a model or a combiner of their own).
A config rebuilt from a run directory is *untrusted* (``fastdist-combine`` reads
``.hydra/overrides.yaml`` from wherever it is pointed): there, only the factories of
fastdist's own configs (:func:`fastdist.conf.registered`) may be imported or called, and
the overrides themselves are checked first (:mod:`fastdist.run.saved_overrides`).
"""

from __future__ import annotations

from fastdist.combiners.aggregators import Aggregate
from fastdist.combiners.base import Combiner
from fastdist.combiners.compression import Compression
from fastdist.conf import registered, resolve
from fastdist.data.partitions import Partition
from fastdist.errors import ConfigError
from fastdist.models.base import Model
from fastdist.optim.base import Optimizer
from fastdist.optim.schedules import Schedule

__all__ = [
    "build_combiner",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "build_partition",
    "build_aggregate",
    "build_compression",
]

_RECORD_TYPES = {
    "combiner": Combiner,
    "model": Model,
    "optimizer": Optimizer,
    "schedule": Schedule,
    "partition": Partition,
    "aggregate": Aggregate,
    "compress": Compression,
}


def _factory(target: str, group: str, trusted: bool):
    if not trusted and target not in registered(group).values():
        raise ConfigError(
            f"{group}._target_={target} is not one of fastdist's own {group}s; a run "
            "directory may only name those"
        )
    return resolve(target, f"{group}._target_")


def _build(node, group: str, trusted: bool, **context):
    if node is None or "_target_" not in node:
        raise ConfigError(f"the {group} config names no factory (_target_)")
    factory = _factory(str(node["_target_"]), group, trusted)
    kwargs = {str(k): _plain(v) for k, v in node.items() if k != "_target_"}
    try:
        record = factory(**kwargs, **context)
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"bad {group} settings: {str(exc).splitlines()[0]}") from None
    expected = _RECORD_TYPES[group]
    if not isinstance(record, expected):
        raise ConfigError(
            f"{group}._target_ must build a {expected.__name__}, got {type(record).__name__}"
        )
    return record


def _plain(value):
    """OmegaConf containers as plain Python values (lists, dicts)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def build_combiner(node, trusted: bool = True) -> Combiner:
    return _build(node, "combiner", trusted)


def build_optimizer(node, trusted: bool = True) -> Optimizer:
    return _build(node, "optimizer", trusted)


def build_schedule(node, trusted: bool = True) -> Schedule:
    return _build(node, "schedule", trusted)


def build_partition(node, trusted: bool = True) -> Partition:
    """The partition record (``iid`` when the config predates the partition group)."""
    if node is None:
        from fastdist.data.partitions import iid

        return iid()
    return _build(node, "partition", trusted)


def build_aggregate(node, trusted: bool = True) -> Aggregate:
    """The aggregation rule (the plain mean when the config predates the group)."""
    return Aggregate() if node is None else _build(node, "aggregate", trusted)


def build_compression(node, trusted: bool = True) -> Compression:
    """What workers send (float32 when the config predates the group)."""
    return Compression() if node is None else _build(node, "compress", trusted)


def build_model(node, input_shape: tuple[int, ...], n_classes: int, trusted: bool = True) -> Model:
    """The model for data of ``input_shape`` per sample and ``n_classes`` classes."""
    return _build(node, "model", trusted, input_shape=tuple(input_shape), n_classes=int(n_classes))
