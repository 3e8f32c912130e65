"""Table and plot for `fastdist -m experiment=noniid` (experiments/README.md section 7).

    python experiments/noniid_report.py MULTIRUN_DIR [--out DIR]

Groups runs by (partition.alpha, combiner): test accuracy, last validation accuracy
and bytes each worker sent, mean and 95% t-interval over seeds; the steps and bytes to
the target validation accuracy (runs that never reach it are counted, not averaged);
and a plot of mean validation accuracy against bytes sent per worker, one panel per
alpha. Needs pandas, matplotlib and scipy (the ``experiments`` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml


def load(directory: Path) -> list[dict]:
    runs = []
    for path in sorted(directory.rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        config = yaml.safe_load((path.parent / ".hydra" / "config.yaml").read_text())
        metrics["alpha"] = float(config["partition"].get("alpha", float("inf")))
        runs.append(metrics)
    return runs


def interval(values) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def fmt(values, scale=1.0, digits=3) -> str:
    mean, half = interval(np.asarray(values) * scale)
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def table(runs: list[dict]) -> str:
    order = ["grad_avg", "fedavg", "fedprox", "scaffold", "fedadam", "diloco"]
    lines = [
        "| alpha | combiner | seeds | test accuracy | last val. accuracy | MB sent / worker "
        "| syncs | reached target | steps to target (reached) |",
        "| ---: | --- | ---: | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for alpha in sorted({r["alpha"] for r in runs}):
        names = sorted({r["combiner"] for r in runs if r["alpha"] == alpha}, key=order.index)
        for name in names:
            group = [r for r in runs if r["alpha"] == alpha and r["combiner"] == name]
            last = [r["evaluations"][-1]["accuracy"] for r in group]
            hits = [r["time_to_accuracy_step"] for r in group if r["time_to_accuracy_step"]]
            lines.append(
                f"| {alpha:g} | {name} | {len(group)} | {fmt([r['test_accuracy'] for r in group])}"
                f" | {fmt(last)} | {np.mean([r['comm_bytes_per_worker'] for r in group]) / 1e6:.2f}"
                f" | {group[0]['comm_syncs']} | {len(hits)}/{len(group)}"
                f" | {fmt(hits, digits=0) if len(hits) > 1 else (hits or ['-'])[0]} |"
            )
    return "\n".join(lines)


def plot(runs: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = sorted({r["alpha"] for r in runs})
    fig, axes = plt.subplots(1, len(alphas), figsize=(5 * len(alphas), 4), sharey=True)
    for ax, alpha in zip(np.atleast_1d(axes), alphas):
        for name in sorted({r["combiner"] for r in runs}):
            group = [r for r in runs if r["alpha"] == alpha and r["combiner"] == name]
            if not group:
                continue
            n = min(len(r["evaluations"]) for r in group)
            x = [group[0]["evaluations"][i]["bytes_per_worker"] / 1e6 for i in range(n)]
            y = [np.mean([r["evaluations"][i]["accuracy"] for r in group]) for i in range(n)]
            ax.plot(x, y, marker=".", label=name)
        ax.set_xscale("log")
        ax.set_title(f"Dirichlet alpha = {alpha:g}")
        ax.set_xlabel("MB sent per worker")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("validation accuracy (mean over seeds)")
    np.atleast_1d(axes)[-1].legend()
    fig.tight_layout()
    path = out / "noniid_accuracy_vs_bytes.png"
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or args.directory
    out.mkdir(parents=True, exist_ok=True)
    runs = load(args.directory)
    text = table(runs)
    (out / "noniid_summary.md").write_text(text + "\n")
    print(text)
    print(f"plot: {plot(runs, out)}")


if __name__ == "__main__":
    main()
