"""The typed schemas fastdist gives Hydra: the top-level one, the loggers' and datasets'
dataclasses, and a schema generated from each record factory's keyword arguments, so a
factory's signature is the one place its options and defaults are written.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import field, make_dataclass
from typing import Any

from fastdist.conf import RECORD_GROUPS, registered, resolve
from fastdist.data.datasets import DATASETS
from fastdist.run.config_schema import FastdistConfig
from fastdist.run.loggers import LoggerConfig

__all__ = ["record_schema", "schema_class", "schema_options"]


def _schema_type(annotation: Any) -> Any:
    """The annotation in a form OmegaConf accepts (Any where it would not)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in (int, float, bool, str):
        return annotation
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return _schema_type(rest[0]) | None
        if set(rest) <= {int, float}:
            return float | None if type(None) in args else float
        return Any
    if origin in (list, tuple) and len(args) >= 1 and args[0] in (int, float, bool, str):
        return list[args[0]]
    return Any


def record_schema(target: str) -> type:
    """A dataclass of the keyword arguments (with defaults) of the factory ``target``.

    Arguments without a default are what fastdist itself passes (a model's
    ``input_shape`` and ``n_classes``), not settings.
    """
    factory = resolve(target)
    attr = factory.__name__
    hints = typing.get_type_hints(factory)
    fields: list = [("_target_", str, field(default=target))]
    for param in inspect.signature(factory).parameters.values():
        if param.default is inspect.Parameter.empty or param.kind is param.VAR_KEYWORD:
            continue
        kind = _schema_type(hints.get(param.name, Any))
        default = param.default
        if isinstance(default, list | tuple):
            spec = field(default_factory=lambda value=tuple(default): list(value))
        else:
            spec = field(default=default)
        fields.append((param.name, kind, spec))
    return make_dataclass(f"{attr}_schema", fields)


def schema_options() -> dict[str, tuple[str, ...]]:
    """The typed schemas fastdist gives Hydra, by config group (``""``: top level).

    Served by ``hydra_plugins/fastdist_hydra/schemas.py`` (``fastdist://`` on the search
    path), which builds each with :func:`schema_class` when a composition first needs it.
    """
    options = {
        "": ("fastdist_schema",),
        "schema/logger": ("logger",),
        "schema/dataset": tuple(DATASETS),
    }
    for group in RECORD_GROUPS:
        options[f"schema/{group}"] = tuple(registered(group))
    return options


def schema_class(path: str) -> type:
    """The dataclass behind the schema ``path`` (``fastdist_schema`` or
    ``schema/<group>/<name>``)."""
    if path == "fastdist_schema":
        return FastdistConfig
    _, group, name = path.split("/")
    if group == "logger":
        return LoggerConfig
    if group == "dataset":
        return DATASETS[name][0]
    return record_schema(registered(group)[name])
