"""The typed schemas come from fastdist's own config source (``fastdist://``), not from
Hydra's ConfigStore, which Hydra deep-copies for every composition; only fastdist's own
configs get that source on their search path."""

from __future__ import annotations

import pytest
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.object_type import ObjectType
from hydra.errors import ConfigCompositionException

from fastdist.conf import registered
from fastdist.run.config import compose
from fastdist.run.record_schemas import schema_options
from hydra_plugins.fastdist_hydra.schemas import (
    SCHEMAS,
    FastdistSchemaSource,
    FastdistSearchPath,
)


def _search_path(*paths: str) -> ConfigSearchPath:
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    search_path = ConfigSearchPathImpl()
    for path in paths:
        search_path.append(provider="test", path=path)
    return search_path


def test_only_fastdists_configs_get_the_schema_source():
    ours = _search_path("pkg://hydra.conf", "pkg://fastdist.conf")
    FastdistSearchPath().manipulate_search_path(ours)
    assert [e.path for e in ours.get_path()][-1] == SCHEMAS
    FastdistSearchPath().manipulate_search_path(ours)  # once only
    assert [e.path for e in ours.get_path()].count(SCHEMAS) == 1
    other_app = _search_path("pkg://hydra.conf", "pkg://someone_else.conf")
    FastdistSearchPath().manipulate_search_path(other_app)
    assert SCHEMAS not in [e.path for e in other_app.get_path()]


def test_the_source_lists_and_loads_every_schema():
    source = FastdistSchemaSource(provider="test", path=SCHEMAS)
    assert source.available()
    assert source.list("schema", ObjectType.GROUP) == sorted(
        g.split("/")[1] for g in schema_options() if g
    )
    assert source.list("schema/combiner", ObjectType.CONFIG) == sorted(registered("combiner"))
    assert source.is_config("fastdist_schema") and source.is_group("schema/model")
    assert not source.is_config("schema/combiner/no_such_combiner")
    loaded = source.load_config("schema/combiner/local_sgd.yaml").config
    loaded.period = 3  # a copy: the next load is unchanged
    assert source.load_config("schema/combiner/local_sgd").config.period == 8


def test_compositions_are_typed_without_the_config_store():
    cfg = compose(["combiner=local_sgd", "combiner.period=4"])
    assert cfg.combiner.period == 4
    with pytest.raises(ConfigCompositionException, match="combiner.perod"):
        compose(["combiner=local_sgd", "combiner.perod=4"])
    with pytest.raises(ConfigCompositionException, match="combiner.period=abc") as bad_type:
        compose(["combiner=local_sgd", "combiner.period=abc"])
    # the type came from the schema: the YAML itself says nothing about period
    assert "could not be converted to Integer" in str(bad_type.value.__cause__)
    assert "schema" not in ConfigStore.instance().repo
    assert "fastdist_schema.yaml" not in ConfigStore.instance().repo


def test_fastdists_yaml_files_are_parsed_once_and_handed_out_as_copies(monkeypatch):
    from hydra_plugins.fastdist_hydra import package_configs
    from hydra_plugins.fastdist_hydra.schemas import FASTDIST_CONFIGS, PARSED_ONCE

    ours = _search_path("pkg://hydra.conf", FASTDIST_CONFIGS)
    FastdistSearchPath().manipulate_search_path(ours)
    assert [e.path for e in ours.get_path()] == ["pkg://hydra.conf", PARSED_ONCE, SCHEMAS]

    monkeypatch.setattr(package_configs, "_parsed", {})
    source = package_configs.ParsedOncePackageSource(provider="test", path=PARSED_ONCE)
    first = source.load_config("combiner/local_sgd.yaml")
    assert len(package_configs._parsed) == 1
    first.config["_target_"] = "changed"  # a copy: the next load is unchanged
    again = source.load_config("combiner/local_sgd")
    assert len(package_configs._parsed) == 1
    assert again.config["_target_"] == "fastdist.combiners.averaging.local_sgd"
    assert again.header == first.header
