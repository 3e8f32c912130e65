"""The setting a run was made with, for fastdist-summarize: the overrides of its Hydra
job (``.hydra/overrides.yaml``, a YAML list of ``key=value`` strings).

Two runs belong to one cell of a table only if they differ in nothing but the seed:
pooling runs made with different learning rates, periods or models would report a
mean of nothing anyone ran. The overrides file is the job's own record of what it
changed, so the setting is those overrides minus the seed.

The file comes with the run directory, from anyone. It is refused unless ``os.stat``
says it is a regular file of at most OVERRIDES_BYTES, it is parsed with
``yaml.safe_load`` (plain YAML: no Python objects, and ``${...}`` is text that is never
resolved: OmegaConf would resolve it, and an interpolation may read the environment),
and it must be a list of printable strings. Values stay text: ``lr=0.1`` and
``lr=0.10`` are two settings (as written, not as meant).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fastdist.cli.run_results import BadFile, read_bounded

__all__ = [
    "COLUMN_KEYS",
    "OVERRIDES_BYTES",
    "OVERRIDES_FILE",
    "markdown",
    "override_key",
    "read_overrides",
    "setting_of",
    "without",
]

OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
OVERRIDES_BYTES = 64 << 10  # a job's overrides are a few hundred bytes
_ITEM_CHARS = 1000
# The tables show these keys in columns of their own (from metrics.json): the setting
# text leaves them out.
COLUMN_KEYS = ("dataset", "combiner", "workers")


def read_overrides(run_dir: str | Path) -> tuple[str, ...] | None:
    """The overrides of the run in ``run_dir`` as written, or None when it has no
    ``.hydra/overrides.yaml``; a :class:`BadFile` when it has one that cannot be used."""
    path = Path(run_dir) / OVERRIDES_FILE
    if not os.path.lexists(path):
        return None
    data = read_bounded(path, OVERRIDES_BYTES)
    try:
        import yaml

        loaded = yaml.safe_load(data.decode("utf-8"))
    except Exception as exc:  # YAML syntax, encoding, nesting too deep: all one answer
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise BadFile(path, f"not a valid overrides file ({detail})") from None
    if not isinstance(loaded, list) or not all(_usable(item) for item in loaded):
        raise BadFile(path, "not a valid overrides file (expected a list of key=value text)")
    return tuple(loaded)


def _usable(item) -> bool:
    # Printable: the text goes into a one-line Markdown table cell and onto a terminal.
    return isinstance(item, str) and 0 < len(item) <= _ITEM_CHARS and item.isprintable()


def override_key(item: str) -> str:
    """The key an override sets, without Hydra's ``+``/``++`` (add, force-add) prefix;
    a deletion keeps its ``~``: deleting a key is not setting it."""
    return item.split("=", 1)[0].lstrip("+")


def _defines_setting(item: str) -> bool:
    key = override_key(item)
    # The seed is what a cell's runs differ in; hydra.* and hydra/ (output directories,
    # launcher, logging) change where and how a job runs, not what it computes.
    return key != "seed" and key != "hydra" and not key.startswith(("hydra.", "hydra/", "~hydra"))


def setting_of(overrides: Iterable[str]) -> tuple[str, ...]:
    """The overrides that define a run's setting: all but the seed and Hydra's own, as
    written (a ``+`` or ``~`` prefix kept), sorted (the order is no part of a setting)."""
    return tuple(sorted(item for item in overrides if _defines_setting(item)))


def without(setting: Iterable[str], key: str) -> tuple[str, ...]:
    """``setting`` less the override of ``key`` (e.g. the combiner, to find the baseline
    that differs from a cell in nothing else)."""
    return tuple(item for item in setting if override_key(item) != key)


def markdown(items: Iterable[str]) -> str:
    """Overrides as Markdown code spans: ``[``, ``*`` or ``_`` in them stay text, and a
    ``|`` (escaped even in a code span) cannot start a new table column."""
    spans = []
    for item in items:
        fence = "`" * (_longest_backtick_run(item) + 1)
        pad = " " if item.startswith("`") or item.endswith("`") else ""
        escaped = item.replace("|", "\\|")
        spans.append(f"{fence}{pad}{escaped}{pad}{fence}")
    return " ".join(spans)


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest
