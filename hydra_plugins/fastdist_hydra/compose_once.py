"""Hydra's basic sweeper, composing each job's config once instead of twice.

Hydra's ``BasicSweeper`` composes every job's config up front to validate the batch (a
bad override fails before any job runs), throws it away, and the basic launcher composes
it again when the job starts. Composing one fastdist config costs about 0.08 s (Hydra's
defaults tree and OmegaConf's merges; measured with cProfile), so in a sweep of small
jobs the second composition was a large share of each job's overhead. This sweeper keeps
the configs that validation composed and hands each to the launcher once: the same
configs, the same sweep syntax, batches and up-front validation, half the composing.

It lives in the ``hydra_plugins`` namespace because Hydra instantiates sweepers only
from there. Memory: a composed config is about 0.5 MB, held from validation until its
job starts, so a batch of N jobs holds N of them (``hydra.sweeper.max_batch_size``
bounds N). Only the in-process basic launcher reuses them; other launchers (joblib,
submitit) compose in their own processes, so for them this is Hydra's sweeper unchanged.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module
# before it is in sys.modules, where dataclasses cannot resolve string annotations.
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

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


class _ComposedOnce:
    """Hydra's config loader, plus the sweep configs composed for validation and not yet
    asked for by the launcher. Everything else is delegated to the wrapped loader."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._waiting: dict[tuple[str, ...], tuple[DictConfig, DictConfig]] = {}

    def compose_ahead(self, master_config: DictConfig, overrides: Sequence[str]) -> None:
        config = self._loader.load_sweep_config(master_config, list(overrides))
        self._waiting[tuple(overrides)] = (master_config, config)

    def forget(self) -> None:
        self._waiting.clear()

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
        self._loader.forget()  # what a failed batch left behind
        if not isinstance(self.launcher, BasicLauncher):
            super().validate_batch_is_legal(batch)
            return
        for overrides in batch:
            self._loader.compose_ahead(self.config, overrides)
