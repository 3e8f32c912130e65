"""The PNGs of fastdist-summarize (matplotlib, from the ``experiments`` extra).

The runs come one per seed with their cell's ``setting`` (the overrides that tell it
from the others, plain text): a curve or bar is one combiner, init and setting, so no
plot pools two settings either."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from fastdist.cli.stats import describe
from fastdist.engine.files import replacing

__all__ = ["write_plots"]


_CELL = ("combiner", "init", "setting")


def _label(combiner: str, init: str, setting: str = "") -> str:
    label = combiner if init == "shared" else f"{combiner} ({init})"
    label = f"{label} {setting}" if setting else label
    return label.replace("$", r"\$")  # matplotlib would parse "$...$" as mathtext


def _grouped(runs: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[tuple(run[k] for k in keys)].append(run)
    return dict(sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))))


def _save(fig, path: Path, written: list[Path]) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with replacing(path) as fh:  # never through a link or FIFO left at the name
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
    written.append(path)


def write_plots(runs: list[dict], out: Path) -> list[Path]:
    """accuracy per combiner, accuracy against workers, learning curves and the
    interpolation barrier; error bars and bands are 95% t-intervals over seeds."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    written: list[Path] = []
    datasets = sorted({r["dataset"] for r in runs})
    width = 5 * len(datasets)

    fig, axes = plt.subplots(1, len(datasets), figsize=(width, 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        sub = [r for r in runs if r["dataset"] == dataset]
        top = max(r["workers"] for r in sub)
        cells = _grouped([r for r in sub if r["workers"] == top], *_CELL)
        summaries = [describe([r["test_accuracy"] for r in g]) for g in cells.values()]
        ax.bar(
            range(len(cells)),
            [s.mean for s in summaries],
            yerr=[0 if s.n < 2 else s.half_width for s in summaries],
            capsize=3,
        )
        labels = [_label(*cell).replace(" (", "\n(") for cell in cells]
        ax.set_xticks(range(len(cells)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy (95% CI)")
        ax.set_title(f"{dataset}, {top} workers")
    _save(fig, out / "accuracy_per_combiner.png", written)

    fig, axes = plt.subplots(1, len(datasets), figsize=(width, 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        sub = [r for r in runs if r["dataset"] == dataset]
        for cell, group in _grouped(sub, *_CELL).items():
            by_workers = _grouped(group, "workers")
            summaries = [describe([r["test_accuracy"] for r in g]) for g in by_workers.values()]
            ax.errorbar(
                [w for (w,) in by_workers],
                [s.mean for s in summaries],
                yerr=[0 if s.n < 2 else s.half_width for s in summaries],
                marker="o",
                capsize=3,
                label=_label(*cell),
            )
        ax.set_xticks(sorted({r["workers"] for r in sub}))
        ax.set_xlabel("workers")
        ax.set_ylabel("test accuracy (95% CI)")
        ax.set_title(dataset)
        ax.legend(fontsize=7)
    _save(fig, out / "accuracy_vs_workers.png", written)

    with_history = [r for r in runs if r.get("history")]
    if with_history:
        _learning_curves(plt, with_history, datasets, out, written)

    with_path = [r for r in runs if r.get("interpolation")]
    if with_path:
        fig, axes = plt.subplots(1, len(datasets), figsize=(width, 4), squeeze=False)
        for ax, dataset in zip(axes[0], datasets):
            sub = [r for r in with_path if r["dataset"] == dataset]
            for cell, group in _grouped(sub, *_CELL).items():
                alpha = group[0]["interpolation"]["alpha"]
                # Only paths over the same points can be averaged point by point.
                same = [r["interpolation"] for r in group if r["interpolation"]["alpha"] == alpha]
                curves = [path["test_accuracy"] for path in same]
                mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(alpha))]
                ax.plot(alpha, mean, marker=".", label=_label(*cell))
            ax.set_xlabel("alpha (worker 0 -> worker 1)")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{dataset}: linear path between two workers")
            ax.legend(fontsize=7)
        _save(fig, out / "interpolation_barrier.png", written)
    return written


def _learning_curves(plt, runs, datasets, out: Path, written: list[Path]) -> None:
    """Train loss and test accuracy against step: mean over seeds, 95% band."""
    fig, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 7), squeeze=False)
    for col, dataset in enumerate(datasets):
        sub = [r for r in runs if r["dataset"] == dataset]
        if not sub:
            continue
        top = max(r["workers"] for r in sub)
        cells = _grouped([r for r in sub if r["workers"] == top], *_CELL)
        for row, (column, ylabel) in enumerate(
            (("train_loss", "train loss"), ("test_accuracy", "test accuracy"))
        ):
            ax = axes[row][col]
            for cell, group in cells.items():
                steps, summaries = _curve(group, column)
                if not steps:
                    continue
                mean = [s.mean for s in summaries]
                line = ax.plot(steps, mean, label=_label(*cell))[0]
                if all(s.n >= 2 for s in summaries):
                    low, high = [s.low for s in summaries], [s.high for s in summaries]
                    ax.fill_between(steps, low, high, alpha=0.2, color=line.get_color())
            ax.set_xlabel("step")
            ax.set_ylabel(f"{ylabel} (mean, 95% CI)")
            ax.set_title(f"{dataset}, {top} workers")
            ax.legend(fontsize=7)
    _save(fig, out / "learning_curves.png", written)


def _curve(group: list[dict], column: str):
    """The steps every seed has a value of ``column`` at, and the summaries there."""
    per_run = [
        {row["step"]: row[column] for row in r["history"] if row.get(column) is not None}
        for r in group
    ]
    steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    return steps, [describe([p[s] for p in per_run]) for s in steps]
