"""fastdist's Hydra configs. Each file in a record group (``combiner/``, ``model/``,
``optimizer/``, ``schedule/``) names its factory in ``_target_``: these files ARE the registry of
fastdist's own records (:func:`registered`)."""

from __future__ import annotations

import functools
from importlib.resources import files

__all__ = ["RECORD_GROUPS", "config_groups", "registered"]

RECORD_GROUPS = ("combiner", "model", "optimizer", "schedule", "partition")


@functools.cache
def registered(group: str) -> dict[str, str]:
    """``{name: _target_}`` of every config fastdist ships in ``conf/<group>/``."""
    import yaml

    out = {}
    for entry in sorted((files(__package__) / group).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            node = yaml.safe_load(entry.read_text()) or {}
            if "_target_" in node:
                out[entry.name[: -len(".yaml")]] = str(node["_target_"])
    return out


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
