"""The cells of fastdist-summarize's tables: the runs of one setting, one per seed.

A cell is every run with the same dataset, combiner, init and worker count (from
metrics.json) and the same overrides apart from the seed (``.hydra/overrides.yaml``:
see run_overrides.py), so a sweep over lr, alpha, period or model never pools two
settings. Within a cell a seed counts once: a second run with the same seed (a rerun,
a copied directory) would inflate n and weigh that seed twice; the first in path order
is kept (chosen before any result is looked at) and the others are named in a warning.
A run whose test accuracy is missing (null, NaN) stays in the cell, for what else it
has, but is not counted in n; it is named in a warning too.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from fastdist.cli.run_overrides import COLUMN_KEYS, markdown, override_key, without
from fastdist.cli.run_results import shown

__all__ = ["Cell", "baseline_of", "make_cells"]


@dataclass
class Cell:
    dataset: str
    combiner: str
    init: str
    workers: int
    setting: tuple[str, ...] | None  # the overrides less the seed; None: no overrides file
    runs: list[dict]  # one per seed, in path order
    shown: tuple[str, ...] = ()  # the overrides that tell this cell from the others

    @property
    def setting_text(self) -> str:
        """The Markdown of the distinguishing overrides."""
        if self.setting is None:
            return "(no overrides file)"
        return markdown(self.shown) or "—"

    @property
    def plain_setting(self) -> str:
        """The distinguishing overrides as plain text (a plot's legend)."""
        return "" if self.setting is None else " ".join(self.shown)

    def values(self, field: str) -> list:
        """``field`` of each run that has it (None and NaN left out)."""
        return [r[field] for r in self.runs if r.get(field) is not None]

    def by_seed(self, field: str) -> dict[int, float | None]:
        return {r["seed"]: r.get(field) for r in self.runs}


def _key(run: dict) -> tuple:
    return (run["dataset"], run["combiner"], run["init"], run["workers"], run["setting"])


def _order(cell: Cell) -> tuple:
    # workers as a number (2 before 10); the runs without overrides after those with.
    no_file = cell.setting is None
    return (cell.dataset, cell.combiner, cell.init, cell.workers, no_file, cell.setting or ())


def make_cells(runs: list[dict], warn: Callable[[str], None]) -> list[Cell]:
    """The cells of ``runs`` (sorted by path, each with a ``setting``), in table order;
    one ``warn`` line per run left out of a cell (a duplicate seed) or of its n (no
    test accuracy)."""
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        grouped[_key(run)].append(run)
    cells = [Cell(*key, runs=_one_per_seed(group, warn)) for key, group in grouped.items()]
    cells.sort(key=_order)
    for cell in cells:
        _warn_missing_accuracy(cell, warn)
    _label(cells)
    return cells


def _one_per_seed(group: list[dict], warn: Callable[[str], None]) -> list[dict]:
    kept: dict[int, dict] = {}
    for run in group:
        first = kept.setdefault(run["seed"], run)
        if first is not run:
            warn(
                f"{shown(run['run'])}: seed {run['seed']} again in the cell of "
                f"{shown(first['run'])}: left out (the first in path order is kept)"
            )
    return list(kept.values())


def _warn_missing_accuracy(cell: Cell, warn: Callable[[str], None]) -> None:
    n = len(cell.values("test_accuracy"))
    for run in cell.runs:
        if run.get("test_accuracy") is None:
            warn(
                f"{shown(run['run'])}: no test accuracy (null or NaN): not counted "
                f"(its cell has n={n} of {len(cell.runs)} runs)"
            )


def _label(cells: list[Cell]) -> None:
    """Set each cell's ``shown``: its overrides that not every run has (those common to
    all say nothing about the difference), less those its columns already show."""
    settings = [set(c.setting) for c in cells if c.setting is not None]
    common = set.intersection(*settings) if settings else set()
    for cell in cells:
        varying = [o for o in cell.setting or () if o not in common]
        cell.shown = tuple(o for o in varying if override_key(o) not in COLUMN_KEYS)
    # A column's value can come from a default in one cell and an override in another:
    # should two rows then read the same, show those cells' every varying override.
    rows = Counter(_row(c) for c in cells)
    for cell in cells:
        if rows[_row(cell)] > 1 and cell.setting is not None:
            cell.shown = tuple(o for o in cell.setting if o not in common)


def _row(cell: Cell) -> tuple:
    return (cell.dataset, cell.combiner, cell.init, cell.workers, cell.setting_text)


def baseline_of(cell: Cell, cells: list[Cell], baseline: str) -> Cell | None:
    """The cell of combiner ``baseline`` that differs from ``cell`` in the combiner
    only: same dataset and workers, same overrides once the combiner's is taken out
    (None if there is none, or ``cell`` is the baseline's). Cells without overrides
    have only their columns to go by; there, as before, the baseline's shared-init
    runs are preferred."""
    if cell.combiner == baseline:
        return None

    def matches(other: Cell) -> bool:
        if (other.combiner, other.dataset, other.workers) != (baseline, cell.dataset, cell.workers):
            return False
        if cell.setting is None or other.setting is None:
            return cell.setting is other.setting
        return without(other.setting, "combiner") == without(cell.setting, "combiner")

    found = [c for c in cells if matches(c)]
    return next((c for c in found if c.init == "shared"), found[0] if found else None)
