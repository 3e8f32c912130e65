"""The typed run configuration: one schema, one source of defaults.

Top-level keys and their defaults live in :class:`FastdistConfig` (``conf/config.yaml``
only chooses the groups). Each dataset has its own dataclass
(:data:`fastdist.data.datasets.DATASETS`); each record (combiner, model, optimizer, schedule) gets
a schema generated from its factory's keyword arguments, so a factory's signature is
the one place its options and defaults are written. Every group YAML extends its schema
(``/schema/<group>/<name>@_here_`` in its defaults list): a misspelt key or a wrong type
is an error when the config is composed, reported by the CLI as one line.

This module is the config's public face: :func:`compose`, and the names of
:mod:`.config_schema` (the top-level settings), :mod:`.record_schemas` (the schemas
served to Hydra) and :mod:`.config_checks` (value checks), re-exported.
"""

from __future__ import annotations

from fastdist.run.config_checks import (
    check_override_types,
    checkpointing,
    default_max_workers,
    validate,
)
from fastdist.run.config_schema import (
    Backend,
    BackendConfig,
    CheckpointConfig,
    Dist,
    FailurePolicy,
    FastdistConfig,
    LrScaling,
    PoolConfig,
    enum_value,
)
from fastdist.run.record_schemas import record_schema, schema_class, schema_options

__all__ = [
    "checkpointing",
    "default_max_workers",
    "enum_value",
    "validate",
    "Backend",
    "BackendConfig",
    "CheckpointConfig",
    "Dist",
    "FailurePolicy",
    "FastdistConfig",
    "PoolConfig",
    "LrScaling",
    "compose",
    "record_schema",
    "schema_class",
    "schema_options",
]


def compose(overrides: list[str] | tuple[str, ...] = ()):
    """The run config for ``overrides``, composed exactly as the CLI would.

    For notebooks and tests: ``fastdist.train(fastdist.compose(["workers=4"]))``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("fastdist.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    check_override_types(cfg, overrides)
    return cfg
