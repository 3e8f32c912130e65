"""``fastdist-summarize``: turn a multirun directory into a table and plots.

    fastdist-summarize multirun/2026-11-24/21-00-00 [--out DIR]

Reads every ``metrics.json`` below the directory, groups runs by dataset, combiner and
worker count, and writes ``summary.md`` (test accuracy mean ± std over seeds, and the
other headline numbers) and PNG plots: accuracy per combiner, accuracy against workers,
and the interpolation (barrier) curves between two workers. Needs the optional extra
``experiments`` (pandas, matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["load_runs", "summary_table", "write_plots", "main"]

_KEYS = [
    "dataset",
    "combiner",
    "workers",
    "seed",
    "test_accuracy",
    "test_loss",
    "samples_per_second",
    "init",
]


def load_runs(directory: str | Path):
    """One row per run (a ``metrics.json``), as a pandas DataFrame."""
    import pandas as pd

    rows = []
    for path in sorted(Path(directory).rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        row = {key: metrics.get(key) for key in _KEYS}
        row["init"] = row["init"] or "shared"
        row["run"] = str(path.parent)
        row["interpolation"] = metrics.get("interpolation")
        row["mean_member_test_accuracy"] = metrics.get("mean_member_test_accuracy")
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no metrics.json below {directory}")
    return pd.DataFrame(rows)


def summary_table(runs) -> str:
    """Markdown: one line per (dataset, combiner, init, workers), mean ± std over seeds."""
    grouped = runs.groupby(["dataset", "combiner", "init", "workers"], dropna=False)
    lines = [
        "| dataset | combiner | init | workers | seeds | test accuracy | test loss | samples/s |",
        "| --- | --- | --- | ---: | ---: | --- | --- | ---: |",
    ]
    for (dataset, combiner, init, workers), group in grouped:
        acc, loss = group["test_accuracy"], group["test_loss"]
        lines.append(
            f"| {dataset} | {combiner} | {init} | {workers} | {len(group)} "
            f"| {acc.mean():.4f} ± {acc.std(ddof=0):.4f} "
            f"| {loss.mean():.4f} ± {loss.std(ddof=0):.4f} "
            f"| {group['samples_per_second'].mean():.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_plots(runs, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    datasets = sorted(runs["dataset"].unique())

    # 1. accuracy per combiner, at the largest worker count of each dataset
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        sub = runs[runs["dataset"] == dataset]
        sub = sub[sub["workers"] == sub["workers"].max()]
        stats = sub.groupby(["combiner", "init"])["test_accuracy"].agg(["mean", "std"])
        labels = [c if i == "shared" else f"{c}\n({i})" for c, i in stats.index]
        ax.bar(range(len(stats)), stats["mean"], yerr=stats["std"].fillna(0), capsize=3)
        ax.set_xticks(range(len(stats)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{dataset}, {sub['workers'].max()} workers")
    fig.tight_layout()
    written.append(out / "accuracy_per_combiner.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # 2. accuracy against worker count
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        sub = runs[runs["dataset"] == dataset]
        for (combiner, init), group in sub.groupby(["combiner", "init"]):
            stats = group.groupby("workers")["test_accuracy"].agg(["mean", "std"])
            label = combiner if init == "shared" else f"{combiner} ({init})"
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"].fillna(0),
                marker="o",
                capsize=3,
                label=label,
            )
        ax.set_xticks(sorted(sub["workers"].unique()))
        ax.set_xlabel("workers")
        ax.set_ylabel("test accuracy")
        ax.set_title(dataset)
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "accuracy_vs_workers.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # 3. interpolation barrier curves between workers 0 and 1
    with_path = runs[runs["interpolation"].notna()]
    if len(with_path):
        fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
        for ax, dataset in zip(axes[0], datasets):
            sub = with_path[with_path["dataset"] == dataset]
            for (combiner, init), group in sub.groupby(["combiner", "init"]):
                curves = np.array([p["test_accuracy"] for p in group["interpolation"]])
                alpha = group["interpolation"].iloc[0]["alpha"]
                label = combiner if init == "shared" else f"{combiner} ({init})"
                ax.plot(alpha, curves.mean(axis=0), marker=".", label=label)
            ax.set_xlabel("alpha (worker 0 -> worker 1)")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{dataset}: linear path between two workers")
            ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "interpolation_barrier.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fastdist-summarize", description=__doc__.splitlines()[0])
    parser.add_argument(
        "directory", help="a multirun (or any) directory holding metrics.json files"
    )
    parser.add_argument("--out", help="where to write summary.md and the PNGs (default: directory)")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
        import pandas  # noqa: F401
    except ImportError:
        sys.stderr.write(
            "fastdist-summarize: error: needs pandas and matplotlib: "
            "pip install 'fastdist[experiments]'\n"
        )
        raise SystemExit(2) from None
    try:
        runs = load_runs(args.directory)
    except FileNotFoundError as exc:
        sys.stderr.write(f"fastdist-summarize: error: {exc}\n")
        raise SystemExit(2) from None
    out = Path(args.out or args.directory)
    out.mkdir(parents=True, exist_ok=True)
    table = summary_table(runs)
    (out / "summary.md").write_text(table)
    plots = write_plots(runs, out)
    print(table)
    print("written:", out / "summary.md", *plots, sep="\n  ")


if __name__ == "__main__":
    main()
