"""What a run directory from elsewhere may say: the check of its saved overrides.

``fastdist-combine`` rebuilds a run's config from ``.hydra/overrides.yaml``, a file
anyone may have written. Hydra would do much more with such a line than set a value:
``partition=../../elsewhere/evil`` loads a YAML file from anywhere on disk (whose
``_target_`` the builder would then be asked to call), ``seed=${oc.env:HOME}`` reads
the environment, ``+hydra.callbacks...`` or ``hydra.searchpath`` add code, and
``model.factory=pkg:fn`` names a function to import. So a saved override may only

- choose one of the options fastdist ships for a config group (``combiner=weight_avg``;
  no path, no ``..``, no option of a search path the run added),
- set a value (``key.sub=value``: plain names, no ``+``/``~``/``@``, no sweep), never
  Hydra's own settings, a ``_target_`` or a ``factory``,
- and contain no interpolation (no ``$`` at all): saved values are data, never
  resolved.

Everything else is refused in one line before anything is composed.
"""

from __future__ import annotations

from fastdist.conf import config_groups
from fastdist.errors import ConfigError

__all__ = ["check_saved_overrides"]

_CODE_KEYS = ("_target_", "factory")


def check_saved_overrides(
    overrides: list[str], replaced: frozenset[str] = frozenset()
) -> list[str]:
    """The overrides of a run directory, each checked (see the module doc); those whose
    key is in ``replaced`` (the user sets it on the command line) are dropped unchecked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    groups = config_groups()
    kept = []
    for text in map(str, overrides):

        def refuse(why: str, text: str = text) -> ConfigError:
            return ConfigError(f"the run directory's override {text!r} is not allowed here ({why})")

        if "$" in text:
            raise refuse("saved values are never interpolated")
        try:
            (override,) = parser.parse_overrides([text])
        except (HydraException, ValueError):
            raise refuse("it does not parse as key=value") from None
        key = override.key_or_group
        if key in replaced:
            continue
        if (
            override.type is not OverrideType.CHANGE
            or override.package is not None
            or override.is_hydra_override()
            or override.is_sweep_override()
        ):
            raise refuse("only key=value, without +, ~, @ or a sweep")
        parts = key.split(".")
        if not all(part.isidentifier() for part in parts):
            raise refuse("keys are plain names")
        if any(part in _CODE_KEYS for part in parts):
            raise refuse("it names code to import; name it on the command line yourself")
        if key in groups and override.value() not in groups[key]:
            raise refuse(f"{key} must be one of fastdist's own: {', '.join(sorted(groups[key]))}")
        kept.append(text)
    return kept
