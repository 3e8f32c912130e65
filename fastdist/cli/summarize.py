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
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

from fastdist.cli.help import command_parser, quiet_on_broken_pipe
from fastdist.cli.stats import describe, paired_differences

__all__ = ["load_runs", "main", "paired_table", "summary_table"]

_KEYS = ["dataset", "combiner", "workers", "seed", "test_accuracy", "test_loss"]
_GROUP = ("dataset", "combiner", "init", "workers")


def _number(text: str):
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def load_runs(directory: str | Path) -> list[dict]:
    """One dict per run (a ``metrics.json``), with its history rows."""
    runs = []
    for path in sorted(Path(directory).rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        run = {key: metrics.get(key) for key in _KEYS}
        run.update(
            init=metrics.get("init") or "shared",
            samples_per_second=metrics.get("samples_per_second"),
            interpolation=metrics.get("interpolation"),
            run=str(path.parent),
            history=_history(path.parent),
        )
        runs.append(run)
    if not runs:
        raise FileNotFoundError(f"no metrics.json below {directory}")
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
    out.mkdir(parents=True, exist_ok=True)
    text = summary_table(runs) + "\n" + paired_table(runs, args.baseline)
    (out / "summary.md").write_text(text)
    print(text)
    written = [out / "summary.md"]
    if not args.no_plots:
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
