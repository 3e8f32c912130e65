"""fastdist-summarize: turn a multirun directory into tables and plots.

    fastdist -m combiner=grad_avg,local_sgd,weight_avg seed=0,1,2,3,4
    fastdist-summarize multirun/<date>/<time> --baseline grad_avg

Reads every metrics.json (and the history.csv beside it) below the directory and
groups the runs by dataset, combiner, init and worker count. summary.md holds, per
group, the number of seeds and the test accuracy and loss as mean ± sample std
(ddof=1) [95% t-interval of the mean], and, against the baseline combiner, the paired
differences in test accuracy over the seeds both ran. The tables need no extra; the
plots (accuracy per combiner, accuracy against workers, learning curves with 95%
bands, the interpolation barrier) need matplotlib: pip install 'fastdist[experiments]'.

A run directory may come from anyone: a metrics.json or history.csv that cannot be
used (too large, not a regular file, not JSON, a field of the wrong type) is skipped
with one warning line, and the other runs are summarised.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from fastdist.cli.help import command_parser, quiet_on_broken_pipe
from fastdist.cli.run_results import BadFile, find_metrics, read_history, read_metrics, shown
from fastdist.cli.stats import describe, paired_differences
from fastdist.engine.files import replacing
from fastdist.errors import ConfigError

__all__ = ["load_runs", "main", "paired_table", "summary_table"]

_GROUP = ("dataset", "combiner", "init", "workers")


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
    """One dict per run (a ``metrics.json``), with its history rows. A file that
    cannot be used (unreadable, too large, not a regular file, fields of the wrong
    type) is skipped with one ``warn`` line naming it; FileNotFoundError (one line)
    when no usable run is left."""
    runs, skipped = [], 0
    for path in find_metrics(directory):
        try:
            run = read_metrics(path)
        except BadFile as exc:
            warn(f"skipped {exc}")
            skipped += 1
            continue
        run.update(run=str(path.parent), history=_history(path.parent, warn))
        runs.append(run)
    if not runs:
        usable = f"usable metrics.json ({skipped} skipped)" if skipped else "metrics.json"
        raise FileNotFoundError(f"no {usable} below {shown(directory)}")
    return runs


def _groups(runs: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[tuple(run[k] for k in _GROUP)].append(run)
    return dict(sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))))


def summary_table(runs: list[dict]) -> str:
    """Markdown, one line per (dataset, combiner, init, workers): seeds, then mean ±
    sample std [95% t-interval] over seeds."""
    lines = [
        "| dataset | combiner | init | workers | seeds | test accuracy | test loss | samples/s |",
        "| --- | --- | --- | ---: | ---: | --- | --- | ---: |",
    ]
    for (dataset, combiner, init, workers), group in _groups(runs).items():
        acc = describe([r["test_accuracy"] for r in group])
        loss = describe([r["test_loss"] for r in group])
        speed = describe([r["samples_per_second"] for r in group])
        lines.append(
            f"| {dataset} | {combiner} | {init} | {workers} | {len(group)} "
            f"| {acc.text()} | {loss.text()} | {speed.mean:.0f} |"
        )
    lines.append("")
    lines.append("mean ± sample std (ddof=1) [95% t-interval of the mean] over seeds.")
    return "\n".join(lines) + "\n"


def paired_table(runs: list[dict], baseline: str) -> str:
    """Markdown: test accuracy minus the baseline's, seed by seed (matched seeds only),
    per (dataset, workers); the baseline's shared-init runs when it has them."""
    cells = _groups(runs)
    lines = [
        f"| dataset | workers | combiner | init | pairs | Δ test accuracy vs {baseline} |",
        "| --- | ---: | --- | --- | ---: | --- |",
    ]
    found = False
    for (dataset, combiner, init, workers), group in cells.items():
        if combiner == baseline:
            continue
        base = cells.get((dataset, baseline, "shared", workers)) or next(
            (
                g
                for k, g in cells.items()
                if k[0] == dataset and k[1] == baseline and k[3] == workers
            ),
            None,
        )
        if base is None:
            continue
        diff, seeds = paired_differences(
            {r["seed"]: r["test_accuracy"] for r in group},
            {r["seed"]: r["test_accuracy"] for r in base},
        )
        if not seeds:
            continue
        found = True
        lines.append(
            f"| {dataset} | {workers} | {combiner} | {init} | {len(seeds)} | {diff.text()} |"
        )
    if not found:
        return f"No runs share seeds with baseline {baseline!r}.\n"
    lines.append("")
    lines.append(
        "Paired over the seeds both ran: mean ± sample std [95% t-interval] of the "
        "per-seed difference; an interval that excludes 0 is a difference at the 5% level."
    )
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    return parser


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        runs = load_runs(args.directory)
    except FileNotFoundError as exc:
        sys.stderr.write(f"fastdist-summarize: error: {exc}\n")
        raise SystemExit(2) from None
    out = Path(args.out or args.directory)
    try:
        _write_outputs(runs, out, args.baseline, plots=not args.no_plots)
    except BrokenPipeError:
        raise  # our reader went away: quiet_on_broken_pipe ends quietly
    except (ConfigError, OSError) as exc:
        # ConfigError: a link planted where an output goes (see fastdist.engine.files).
        detail = exc if isinstance(exc, ConfigError) else exc.strerror or type(exc).__name__
        sys.stderr.write(f"fastdist-summarize: error: cannot write to {shown(out)}: {detail}\n")
        raise SystemExit(2) from None


def _write_outputs(runs: list[dict], out: Path, baseline: str, plots: bool) -> None:
    """summary.md and the plots, each written as a new file that replaces the old one:
    never opened through a link or a FIFO someone left in the (default) run directory."""
    out.mkdir(parents=True, exist_ok=True)
    text = summary_table(runs) + "\n" + paired_table(runs, baseline)
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

            written += write_plots(runs, out)
    print("written:", *written, sep="\n  ")


if __name__ == "__main__":
    main()
