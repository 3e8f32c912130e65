"""Composing a run's config exactly as the CLI does: :func:`compose`.

The typed configuration itself lives beside it: the top-level settings and their
defaults in :mod:`.config_schema` (:class:`~fastdist.run.config_schema.FastdistConfig`;
``conf/config.yaml`` only chooses the groups), the schemas served to Hydra in
:mod:`.record_schemas` (each record's generated from its factory's keyword arguments,
so a factory's signature is the one place its options and defaults are written; every
group YAML extends its schema, so a misspelt key or a wrong type is an error when the
config is composed), and the value checks in :mod:`.config_checks`.
"""

from __future__ import annotations

from fastdist.run.config_checks import check_override_types

__all__ = ["compose"]


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
