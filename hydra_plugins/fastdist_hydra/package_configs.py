"""fastdist's own YAML configs (``pkg://fastdist.conf``), each file read and parsed once
per process.

Hydra's package config source opens and parses a YAML file every time a composition
loads it, and a sweep composes one config per job (about ten of fastdist's files each,
the 5 KB help text among them; PyYAML's pure-Python parser made that about a fifth of a
composition). This source parses each file once and hands out copies; everything else
(listing, groups, headers) is Hydra's. The search path plugin in :mod:`.schemas` puts it
in place of ``pkg://fastdist.conf``. The files are part of the installed package, so
they do not change under a running process.
"""

# No `from __future__ import annotations` (see compose_once.py).
import copy

from hydra._internal.core_plugins.importlib_resources_config_source import (
    ImportlibResourcesConfigSource,
)
from hydra.plugins.config_source import ConfigResult

__all__ = ["ParsedOncePackageSource"]

_parsed: dict[tuple[str, str], ConfigResult] = {}


class ParsedOncePackageSource(ImportlibResourcesConfigSource):
    """``fastdist-pkg://<package>``: Hydra's ``pkg://`` source, parsing each file once."""

    @staticmethod
    def scheme() -> str:
        return "fastdist-pkg"

    def load_config(self, config_path: str) -> ConfigResult:
        key = (self.path, self._normalize_file_name(config_path))
        parsed = _parsed.get(key)
        if parsed is None:
            parsed = _parsed[key] = super().load_config(config_path)
        return ConfigResult(
            # A copy: the composition merges into it and may change it.
            config=copy.deepcopy(parsed.config),
            path=parsed.path,
            provider=parsed.provider,
            header=dict(parsed.header),
            is_schema_source=parsed.is_schema_source,
        )
