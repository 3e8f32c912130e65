"""fastdist's typed config schemas, served to Hydra by a config source of their own.

fastdist attaches a schema to every record config (``/schema/combiner/local_sgd@_here_``
in ``conf/combiner/local_sgd.yaml``) and to the top-level config (``fastdist_schema``).
Kept in Hydra's ``ConfigStore`` they cost every composition a copy of all ~45 of them
(Hydra deep-copies the whole store for each composition, ``CachingConfigRepository``),
while a composition uses about ten; and building them all at start-up imported every
record's module (Numba with them) before Hydra had even parsed the command line. This
source serves the same schemas from ``fastdist://<module>`` (the module's
``schema_options()`` lists them, ``schema_class(path)`` builds one): built when first
asked for, copied only when loaded, and not copied with the repository. Measured
(quiet, 2 vCPUs): ``import fastdist.cli.main`` 0.4-0.6 s -> 0.12-0.23 s; with
:mod:`.package_configs`, a composition 0.086 -> 0.070 s of CPU.

The search path gets the source only for fastdist's own configs (a search path that
holds ``pkg://fastdist.conf``), never for another Hydra application in the same
environment, and a user's ``hydra.searchpath=[...]`` keeps it.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module
# before it is in sys.modules (see compose_once.py).
import copy
import functools
import importlib
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

__all__ = ["FastdistSchemaSource", "FastdistSearchPath"]

FASTDIST_CONFIGS = "pkg://fastdist.conf"
SCHEMAS = "fastdist://fastdist.run.record_schemas"
PARSED_ONCE = "fastdist-pkg://fastdist.conf"


@functools.cache
def _module(path: str) -> Any:
    return importlib.import_module(path)


@functools.cache
def _serves_schemas(path: str) -> bool:
    # False for an older fastdist (one that kept its schemas in Hydra's ConfigStore),
    # e.g. another checkout on PYTHONPATH in front of this install.
    try:
        return hasattr(_module(path), "schema_options")
    except ImportError:
        return False


@functools.cache
def _options(path: str) -> dict[str, tuple[str, ...]]:
    """``{group: option names}``; the group ``""`` holds top-level configs."""
    return {group: tuple(names) for group, names in _module(path).schema_options().items()}


@functools.cache
def _node(path: str, config: str) -> Any:
    return OmegaConf.structured(_module(path).schema_class(config))


class FastdistSchemaSource(ConfigSource):
    """``fastdist://<module>``: the schemas that ``<module>`` describes."""

    @staticmethod
    def scheme() -> str:
        return "fastdist"

    def _split(self, config_path: str) -> tuple[str, str]:
        name = config_path.rstrip("/")
        name = name[: -len(".yaml")] if name.endswith(".yaml") else name
        group, _, option = name.rpartition("/")
        return group, option

    def load_config(self, config_path: str) -> ConfigResult:
        group, option = self._split(config_path)
        if not self.is_config(config_path):
            raise ConfigLoadError(f"Config not found: {config_path}")
        config = f"{group}/{option}" if group else option
        return ConfigResult(
            # A copy: the caller merges into it, and the next composition needs it as is.
            config=copy.deepcopy(_node(self.path, config)),
            path=f"{self.scheme()}://{self.path}",
            provider=self.provider,
            header={"package": None},
        )

    def available(self) -> bool:
        return _serves_schemas(self.path)

    def is_group(self, config_path: str) -> bool:
        group = config_path.strip("/")
        options = _options(self.path)
        return group == "" or any(g == group or g.startswith(group + "/") for g in options)

    def is_config(self, config_path: str) -> bool:
        group, option = self._split(config_path.strip("/"))
        return option in _options(self.path).get(group, ())

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        group = config_path.strip("/")
        found: set[str] = set()
        for name in _options(self.path):
            if name.startswith(group + "/") or (group == "" and name):
                child = name[len(group) + 1 :] if group else name
                if results_filter in (None, ObjectType.GROUP):
                    found.add(child.split("/")[0])
        if results_filter in (None, ObjectType.CONFIG):
            found.update(_options(self.path).get(group, ()))
        return sorted(found)

    def __deepcopy__(self, memo: dict) -> "FastdistSchemaSource":
        # Hydra copies its repository (with its sources) for every composition; this
        # source holds no state that a composition changes.
        return self


class FastdistSearchPath(SearchPathPlugin):
    """On the search path of fastdist's own configs: adds :data:`SCHEMAS`, and reads
    ``pkg://fastdist.conf`` through :mod:`.package_configs` (each file parsed once)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        paths = [element.path for element in search_path.get_path()]
        wanted = FASTDIST_CONFIGS in paths and SCHEMAS not in paths
        if not (wanted and _serves_schemas(SCHEMAS.split("://", 1)[1])):
            return
        for element in search_path.get_path():
            if element.path == FASTDIST_CONFIGS:
                element.path = PARSED_ONCE
        search_path.append(provider="fastdist", path=SCHEMAS)
