"""fastdist-summarize: turn a multirun directory into tables and plots.

    fastdist -m combiner=grad_avg,local_sgd,weight_avg seed=0,1,2,3,4
    fastdist-summarize multirun/<date>/<time> --baseline grad_avg

Reads every metrics.json (and the history.csv and .hydra/overrides.yaml beside it)
below the directory and groups the runs into cells: the same dataset, combiner, init
and worker count, and the same overrides but the seed, so a sweep over lr, alpha,
period or model never pools two settings (a run without overrides.yaml is grouped by
the first four only, with a warning). A seed counts once per cell. summary.md holds,
per cell, n (the runs with a test accuracy), the test accuracy and loss and the final
validation accuracy as mean ± sample std (ddof=1) [95% t-interval of the mean]; then,
against the baseline combiner's cell of the same setting, the paired differences in
test accuracy with a paired t-test, Holm's correction across the table and an
equivalence test (TOST within ±margin); then, for runs with eval.target_accuracy, how
many reached it and the median step, counting the others as never.

--select val reports instead the cell with the best mean validation accuracy, and the
test accuracy of that cell only.

The tables need no extra; the plots (accuracy per combiner, accuracy against workers,
learning curves with 95% bands, the interpolation barrier) need matplotlib: pip install
'fastdist[experiments]'.

A run directory may come from anyone: a metrics.json, history.csv or overrides.yaml
that cannot be used (too large, not a regular file, not JSON or YAML, a field of the
wrong type) is skipped with one warning line, and the other runs are summarised.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from fastdist.cli.cells import Cell, make_cells
from fastdist.cli.help import command_parser, quiet_on_broken_pipe
from fastdist.cli.run_overrides import OVERRIDES_FILE, read_overrides, setting_of
from fastdist.cli.run_results import BadFile, find_metrics, read_history, read_metrics, shown
from fastdist.cli.tables import (
    paired_table,
    selection_report,
    summary_table,
    time_to_target_table,
)
from fastdist.engine.files import replacing
from fastdist.errors import ConfigError

__all__ = ["load_runs", "main", "report"]


def _warn(message: str) -> None:
    sys.stderr.write(f"fastdist-summarize: warning: {message}\n")


def _history(run_dir: Path, warn: Callable[[str], None]) -> list[dict]:
    """The history rows beside a run's metrics (none when there is no history.csv, or
    one that cannot be used: the run's tables do not need it, only its plots)."""
    path = run_dir / "history.csv"
    if not os.path.lexists(path):
        return []
    try:
        rows, skipped = read_history(path)
    except BadFile as exc:
        warn(f"ignored {exc}")
        return []
    if skipped:
        warn(f"{shown(path)}: skipped {skipped} malformed row(s)")
    return rows


def load_runs(directory: str | Path, warn: Callable[[str], None] = _warn) -> list[dict]:
    """One dict per run (a ``metrics.json``), in path order, with its ``setting`` (its
    overrides less the seed; None without an overrides file) and history rows. A file
    that cannot be used (unreadable, too large, not a regular file, fields of the wrong
    type) skips its run with one ``warn`` line naming it; FileNotFoundError (one line)
    when no usable run is left."""
    runs, skipped = [], 0
    for path in find_metrics(directory):
        try:
            run = read_metrics(path)
            overrides = read_overrides(path.parent)
        except BadFile as exc:
            warn(f"skipped {exc}")
            skipped += 1
            continue
        setting = None if overrides is None else setting_of(overrides)
        run.update(run=str(path.parent), setting=setting, history=_history(path.parent, warn))
        runs.append(run)
    if not runs:
        usable = f"usable metrics.json ({skipped} skipped)" if skipped else "metrics.json"
        raise FileNotFoundError(f"no {usable} below {shown(directory)}")
    _warn_without_overrides(runs, warn)
    return runs


def _warn_without_overrides(runs: list[dict], warn: Callable[[str], None]) -> None:
    # Once for all of them: a directory of old runs would otherwise warn per run.
    without = [r["run"] for r in runs if r["setting"] is None]
    if without:
        warn(
            f"{len(without)} run(s) without {OVERRIDES_FILE} (the first: {shown(without[0])}): "
            "grouped by dataset, combiner, init and workers only, so they pool whatever "
            "else differs"
        )


def report(cells: list[Cell], baseline: str, margin: float) -> str:
    """summary.md: the summary, the paired comparisons, the time to a target."""
    parts = [summary_table(cells), paired_table(cells, baseline, margin)]
    parts.append(time_to_target_table(cells))
    return "\n".join(part for part in parts if part)


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text!r} is not an accuracy difference in (0, 1)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = command_parser("fastdist-summarize", __doc__)
    parser.add_argument(
        "directory", help="a multirun (or any) directory holding metrics.json files"
    )
    parser.add_argument("--out", help="where to write summary.md and the PNGs (default: directory)")
    parser.add_argument(
        "--baseline",
        default="grad_avg",
        help="combiner the others are compared with, seed by seed",
    )
    parser.add_argument(
        "--margin",
        type=_margin,
        default=0.01,
        help="equivalence margin of the TOST against the baseline, in test accuracy",
    )
    parser.add_argument(
        "--select",
        choices=["val"],
        help="val: report the setting with the best mean validation accuracy, and the "
        "test accuracy of that setting only (no other test score, no plots)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    return parser


def _error(message: str) -> SystemExit:
    sys.stderr.write(f"fastdist-summarize: error: {message}\n")
    return SystemExit(2)


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        runs = load_runs(args.directory)
    except FileNotFoundError as exc:
        raise _error(str(exc)) from None
    cells = make_cells(runs, _warn)
    if args.select:
        text = selection_report(cells)
        if text is None:
            raise _error(
                f"--select val: no run below {shown(args.directory)} has a validation score "
                "(an evaluation on the validation split at its final step: validation_fraction)"
            )
    else:
        text = report(cells, args.baseline, args.margin)
    out = Path(args.out or args.directory)
    try:
        # The plots show every cell's test accuracy: none after a choice by validation.
        _write_outputs(text, cells, out, plots=not (args.no_plots or args.select))
    except BrokenPipeError:
        raise  # our reader went away: quiet_on_broken_pipe ends quietly
    except (ConfigError, OSError) as exc:
        # ConfigError: a link planted where an output goes (see fastdist.engine.files).
        detail = exc if isinstance(exc, ConfigError) else exc.strerror or type(exc).__name__
        raise _error(f"cannot write to {shown(out)}: {detail}") from None


def _write_outputs(text: str, cells: list[Cell], out: Path, plots: bool) -> None:
    """summary.md and the plots, each written as a new file that replaces the old one:
    never opened through a link or a FIFO someone left in the (default) run directory."""
    out.mkdir(parents=True, exist_ok=True)
    with replacing(out / "summary.md") as fh:
        fh.write(text.encode())
    print(text)
    written = [out / "summary.md"]
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("plots skipped: they need matplotlib: pip install 'fastdist[experiments]'")
        else:
            from fastdist.cli.plots import write_plots

            # One run per seed, labelled with its cell's setting: no plot pools settings.
            runs = [{**r, "setting": c.plain_setting} for c in cells for r in c.runs]
            written += write_plots(runs, out)
    print("written:", *written, sep="\n  ")


if __name__ == "__main__":
    main()
