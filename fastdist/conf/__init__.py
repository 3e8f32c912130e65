"""fastdist's Hydra configs. Each file in a record group (``combiner/``, ``model/``,
``optimizer/``, ``schedule/``, ``partition/``, ``aggregate/``, ``compress/``) names
its factory in ``_target_``: these files ARE the registry of fastdist's own records
(:func:`registered`, :func:`preset`), and :func:`resolve` is the one place a target
string becomes the object it names."""

from __future__ import annotations

import functools
from importlib.resources import files

__all__ = ["RECORD_GROUPS", "config_groups", "preset", "registered", "resolve"]

RECORD_GROUPS = (
    "combiner",
    "model",
    "optimizer",
    "schedule",
    "partition",
    "aggregate",
    "compress",
)


def resolve(target: str, what: str = "target") -> object:
    """The object ``target`` names: ``package.module.attr`` (Hydra's ``_target_``) or
    ``package.module:attr`` (entry-point style). ``what`` names the setting in the
    one-line ConfigError (``model.factory``, ``combiner._target_``)."""
    import importlib

    from fastdist.errors import ConfigError, FastdistError

    text = str(target)
    module, sep, attr = text.partition(":")
    if not sep:
        module, _, attr = text.rpartition(".")
    if not module or not attr:
        raise ConfigError(
            f"{what}={text!r} must read 'package.module.name' or 'package.module:name'"
        )
    try:
        return getattr(importlib.import_module(module), attr)
    except FastdistError:
        raise  # the module's own one-line error (a missing extra names its install)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{what}={text} cannot be imported ({exc})") from None


@functools.cache
def _configs(group: str) -> dict[str, dict]:
    """``{name: the YAML's node}`` of every config fastdist ships in ``conf/<group>/``."""
    import yaml

    out = {}
    for entry in sorted((files(__package__) / group).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            out[entry.name[: -len(".yaml")]] = yaml.safe_load(entry.read_text()) or {}
    return out


@functools.cache
def registered(group: str) -> dict[str, str]:
    """``{name: _target_}`` of every record config fastdist ships in ``conf/<group>/``."""
    return {n: str(node["_target_"]) for n, node in _configs(group).items() if "_target_" in node}


def preset(group: str, name: str) -> dict:
    """The options the shipped config ``name`` of ``group`` sets for its factory
    (``conf/combiner/fedadam.yaml``: ``outer=adam``, ``outer_lr=0.01``, ...)."""
    node = _configs(group)[name]
    return {k: v for k, v in node.items() if k not in ("defaults", "_target_")}


@functools.cache
def config_groups() -> dict[str, frozenset[str]]:
    """``{group: the names of the options fastdist ships}`` for every config group a
    top-level override chooses (``combiner=...``, ``experiment=...``; not Hydra's)."""
    out = {}
    for folder in files(__package__).iterdir():
        if folder.is_dir() and folder.name not in ("hydra", "__pycache__"):
            names = (p.name for p in folder.iterdir() if p.name.endswith(".yaml"))
            out[folder.name] = frozenset(name[: -len(".yaml")] for name in names)
    return out
