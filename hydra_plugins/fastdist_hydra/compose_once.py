"""Hydra's basic sweeper, composing each job's config at most once.

Hydra's ``BasicSweeper`` composes every job's config up front to validate the batch (a
bad override fails before any job runs), throws it away, and the basic launcher composes
it again when the job starts. Composing one fastdist config costs about 0.07 s of CPU
(Hydra's defaults tree, every file loaded and merged), which in a sweep of small jobs
was most of a job's overhead. This sweeper

- keeps the configs that validation composed and hands each to the launcher once, and
- makes the config of a job that chooses the same config groups as a job already
  composed from that job's config (:class:`_SameGroupJobs`), instead of composing it.

The sweep syntax, batches and up-front validation are Hydra's, and so are the configs
(tests/test_sweeper.py compares them with Hydra's, its ``hydra`` node included). The
validation goes further than Hydra's: each job's config is also put through the checks
its run makes before it allocates anything, so a bad value in any job of a batch fails
the sweep before its first job trains.

It lives in the ``hydra_plugins`` namespace because Hydra instantiates sweepers only
from there. Memory: a composed config is about 0.5 MB, held from validation until its
job starts, so a batch of N jobs holds N of them, plus one kept per set of group choices
(``hydra.sweeper.max_batch_size`` bounds N). Only the in-process basic launcher reuses
them; other launchers (joblib, submitit) compose in their own processes, so for them
this is Hydra's sweeper unchanged.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module
# before it is in sys.modules, where dataclasses cannot resolve string annotations.
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

__all__ = ["ComposeOnceSweeper", "ComposeOnceSweeperConf"]


@dataclass
class ComposeOnceSweeperConf:
    _target_: str = "hydra_plugins.fastdist_hydra.compose_once.ComposeOnceSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="compose_once", node=ComposeOnceSweeperConf, provider="fastdist"
)


def _unwrapped(loader: Any) -> Any:
    return loader


def _plain(override: Override) -> bool:
    """``key=value`` or ``group=option``: no ``+``/``++``/``~``, no ``@package``, not
    Hydra's own settings."""
    return (
        override.type == OverrideType.CHANGE
        and override.package is None
        and not override.is_hydra_override()
    )


def _same_groups(parsed: list[Override], first: list[Override], template: DictConfig) -> bool:
    """Whether ``parsed`` chooses every config group as ``first`` did (same defaults tree)."""
    groups = template.hydra.runtime.choices
    return all(
        mine.get_value_element_as_str() == theirs.get_value_element_as_str()
        for mine, theirs in zip(parsed, first, strict=True)
        if mine.key_or_group in groups
    )


def _with_values(template: DictConfig, parsed: list[Override], master: DictConfig):
    """A copy of ``template`` with the value overrides of ``parsed`` applied, and the
    job's override list and directory name set as Hydra's composition sets them; None if
    an override does not apply (Hydra's composition then reports it)."""
    groups = template.hydra.runtime.choices
    config = copy.deepcopy(template)
    try:
        values = [o for o in parsed if o.key_or_group not in groups]
        ConfigLoaderImpl._apply_overrides_to_config(values, config)
    except Exception:
        return None
    naming = config.hydra.job.config.override_dirname
    with open_dict(config.hydra):
        config.hydra.overrides.task = [o.input_line for o in parsed]
        config.hydra.job.override_dirname = get_overrides_dirname(
            overrides=parsed,
            kv_sep=naming.kv_sep,
            item_sep=naming.item_sep,
            exclude_keys=naming.exclude_keys,
        )
    OmegaConf.copy_cache(from_config=master, to_config=config)
    return config


class _SameGroupJobs:
    """Configs of jobs that choose the same config groups, made from one composed job.

    In a sweep like ``seed=0,...,19`` every job has the same defaults tree; only values
    differ. Hydra composes each from scratch (defaults tree, every file loaded and
    merged). Here the first job of each shape (the same override keys, in order, and
    the same choice for every key that is a config group) is composed by Hydra and kept;
    the next ones are a copy of it with their value overrides applied by Hydra's own
    ``_apply_overrides_to_config`` (which Hydra's composition applies last, too) and the
    job's override list and directory name set as Hydra sets them. Anything else (a
    ``+``, ``~`` or ``@`` override, a different group choice, an override that fails to
    apply) is composed by Hydra. tests/test_sweeper.py checks that the configs are
    equal, Hydra's node included, to the ones Hydra composes.
    """

    def __init__(self) -> None:
        self._parser = OverridesParser.create()
        # override keys -> the composed jobs with those keys (one per set of group choices)
        self._first: dict[tuple, list[tuple[DictConfig, list[Override], DictConfig]]] = {}

    def _parse(self, overrides: Sequence[str]) -> list[Override] | None:
        parsed = self._parser.parse_overrides(list(overrides))
        return parsed if all(_plain(o) for o in parsed) else None

    def remember(self, master: DictConfig, overrides: Sequence[str], config: DictConfig) -> None:
        parsed = self._parse(overrides)
        if parsed is not None and isinstance(config, DictConfig):
            shape = tuple(o.key_or_group for o in parsed)
            # A pristine copy: the launcher's job changes its own config as it runs.
            self._first.setdefault(shape, []).append((master, parsed, copy.deepcopy(config)))

    def derive(self, master: DictConfig, overrides: Sequence[str]) -> DictConfig | None:
        parsed = self._parse(overrides)
        if parsed is None:
            return None
        for first_master, first_parsed, template in self._first.get(
            tuple(o.key_or_group for o in parsed), ()
        ):
            if first_master is master and _same_groups(parsed, first_parsed, template):
                return _with_values(template, parsed, master)
        return None

    def forget(self) -> None:
        self._first.clear()


class _ComposedOnce:
    """Hydra's config loader, plus the sweep configs composed for validation and not yet
    asked for by the launcher. Everything else is delegated to the wrapped loader."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._waiting: dict[tuple[str, ...], tuple[DictConfig, DictConfig]] = {}
        self._same_groups = _SameGroupJobs()

    def compose_ahead(self, master_config: DictConfig, overrides: Sequence[str]) -> DictConfig:
        config = self._same_groups.derive(master_config, overrides)
        if config is None:
            config = self._loader.load_sweep_config(master_config, list(overrides))
            self._same_groups.remember(master_config, overrides, config)
        self._waiting[tuple(overrides)] = (master_config, config)
        return config

    def forget(self) -> None:
        self._waiting.clear()
        self._same_groups.forget()

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> Any:
        waiting = self._waiting.pop(tuple(sweep_overrides), None)
        if waiting is not None and waiting[0] is master_config:
            return waiting[1]
        return self._loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_loader"], name)

    def __reduce__(self) -> tuple:
        # A launcher that ships the context to other processes ships Hydra's own loader.
        return _unwrapped, (self._loader,)


class ComposeOnceSweeper(BasicSweeper):
    """``BasicSweeper`` whose up-front validation composes each job's config for the
    basic launcher to run, rather than composing it a second time."""

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self._loader = _ComposedOnce(hydra_context.config_loader)
        context = HydraContext(config_loader=self._loader, callbacks=hydra_context.callbacks)
        super().setup(hydra_context=context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose every job of the batch and make the checks each job's run would make
        as it starts (:func:`fastdist.run.prestart.check_job`): a bad value in the last
        job fails the sweep before the first one trains."""
        from fastdist.run.prestart import check_job

        self._loader.forget()  # what a failed batch left behind
        in_process = isinstance(self.launcher, BasicLauncher)
        for overrides in batch:
            if in_process:
                config = self._loader.compose_ahead(self.config, overrides)
            else:  # the launcher composes again in its own processes
                config = self._loader.load_sweep_config(self.config, list(overrides))
            check_job(config, overrides)
