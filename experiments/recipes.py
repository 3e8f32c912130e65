"""Recipes chosen on validation, and the MNIST-1D paper's baselines
(experiments/README.md: the published-results table and sections 5 and 6).

Every recipe is chosen by ``fastdist-tune`` (a grid on tuning seeds 10-11, scored on the
validation split, the best point re-run on fresh seeds 0-9 and scored on the test set
once); the paper's own MLP recipe is run as published, nothing chosen. From the
repository root:

  python experiments/recipes.py run       # the sweeps, into multirun/book/ (~30 min)
  python experiments/recipes.py collect   # their records into experiments/results/recipes/
  make book                               # the README's tables from those records

``collect`` keeps, per recipe, fastdist-tune's tuning.json (grid, budget, every point's
validation accuracy, the choice, each fresh seed's test accuracy) and, for the fixed
recipe, one row per seed in fixed_runs.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "multirun" / "book"
OUT = ROOT / "experiments" / "results" / "recipes"
SEEDS = "0,1,2,3,4,5,6,7,8,9"
TUNE_SEEDS = "10,11"
MLP = ["experiment=mnist1d_mlp"]  # 40-100-100-10, batch 100, 6000 steps, one worker
CNN = [
    "model=cnn1d_mnist1d",
    "dataset=mnist1d",
    "workers=2",
    "combiner=grad_avg",
    "batch_size=50",
    "epochs=300",
    "optimizer.momentum=0.9",
    "diagnostics=false",
]

# name -> (what it is, fastdist-tune overrides). The baselines get the AdamW recipe's
# budget: 16 grid points x 2 tuning seeds each.
TUNED = {
    "mlp_adamw_cosine": (
        "MLP, AdamW + cosine",
        [
            *MLP,
            "optimizer.lr=0.003,0.01,0.02,0.03",
            "optimizer.weight_decay=0,0.1,0.3,1.0",
        ],
    ),
    "mlp_adam_constant": (
        "MLP, Adam, constant rate (the paper's optimizer)",
        [
            *MLP,
            "optimizer.weight_decay=0",
            "schedule=constant",
            "optimizer.lr=0.0001,0.0002,0.0003,0.0005,0.0007,0.001,0.0015,0.002,"
            "0.003,0.004,0.005,0.007,0.01,0.015,0.02,0.03",
        ],
    ),
    "mlp_sgd_constant": (
        "MLP, momentum SGD, constant rate",
        [
            *MLP,
            "optimizer=sgd",
            "schedule=constant",
            "optimizer.lr=0.01,0.03,0.05,0.1",
            "optimizer.weight_decay=0,0.0001,0.001,0.01",
        ],
    ),
    "logistic": (
        "logistic regression (no hidden layer), Adam",
        [
            *MLP,
            "model.hidden=[]",
            "optimizer.weight_decay=0",
            "schedule=constant",
            "optimizer.lr=0.001,0.003,0.01,0.03,0.1",
        ],
    ),
    "cnn": (
        "CNN (`cnn1d_mnist1d`), momentum SGD, 2 workers x batch 50, 300 epochs",
        [
            *CNN,
            "optimizer.lr=0.02,0.05,0.1,0.2",
            "optimizer.weight_decay=0,5e-4,1e-3",
        ],
    ),
}
# The MNIST-1D paper's own MLP recipe, as published: nothing chosen, all 4000 rows.
FIXED = {
    "mlp_paper_recipe": (
        "MLP, the paper's recipe as published (Adam lr 0.01, constant, all 4000 rows)",
        [
            *MLP,
            "validation_fraction=0",
            "optimizer.weight_decay=0",
            "optimizer.lr=0.01",
            "schedule=constant",
        ],
    ),
}
# Greydanus (2020), "Scaling down deep learning" (MNIST-1D), Table/Figure of baselines.
PAPER = {"logistic": 0.32, "mlp": 0.68, "cnn": 0.94}


def run() -> None:
    for name, (_, overrides) in TUNED.items():
        command = [sys.executable, "-m", "fastdist.cli.tune", str(RUNS / name), *overrides]
        command += ["--tune-seeds", TUNE_SEEDS, "--seeds", SEEDS]
        subprocess.run(command, cwd=ROOT, check=True)
    for name, (_, overrides) in FIXED.items():
        where = RUNS / name
        if (where / "done").exists():
            continue
        command = [sys.executable, "-m", "fastdist", "-m", *overrides, f"seed={SEEDS}"]
        command += ["quiet=true", f"hydra.sweep.dir={where}", "hydra.sweep.subdir=${hydra.job.num}"]
        subprocess.run(command, cwd=ROOT, check=True)
        (where / "done").touch()


def collect() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in TUNED:
        record = RUNS / name / "tuning.json"
        if not record.exists():
            print(f"{name}: no tuning.json yet (run it first); left out", file=sys.stderr)
            continue
        shutil.copyfile(record, OUT / f"{name}.json")
    with open(OUT / "fixed_runs.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["recipe", "seed", "test_accuracy", "test_loss"])
        for name in FIXED:
            rows = []
            for path in sorted((RUNS / name).glob("*/metrics.json")):
                metrics = json.loads(path.read_text())
                rows.append((metrics["seed"], metrics["test_accuracy"], metrics["test_loss"]))
            for seed, accuracy, loss in sorted(rows):
                writer.writerow([name, seed, repr(accuracy), repr(loss)])


# ------------------------------------------------------------------ the book's tables


def _tuned(name: str) -> dict:
    return json.loads((OUT / f"{name}.json").read_text())


def _by_seed(name: str) -> dict[int, float]:
    if name in FIXED:
        with open(OUT / "fixed_runs.csv", newline="") as fh:
            return {
                int(r["seed"]): float(r["test_accuracy"])
                for r in csv.DictReader(fh)
                if r["recipe"] == name
            }
    return {int(s): a for s, a in _tuned(name)["test_accuracy"]["by_seed"].items()}


def _interval(values) -> str:
    from fastdist.cli.stats import describe

    s = describe(list(values))
    return f"{s.mean:.4f} [{s.low:.4f}, {s.high:.4f}]"


def _paired(name: str, baseline: str) -> str:
    from fastdist.cli.stats import describe

    mine, base = _by_seed(name), _by_seed(baseline)
    seeds = sorted(set(mine) & set(base))
    s = describe([mine[k] - base[k] for k in seeds])
    return f"{s.mean:+.4f} [{s.low:+.4f}, {s.high:+.4f}]"


def _chosen(name: str) -> str:
    record = _tuned(name)
    shown = " ".join(f"`{item}`" for item in record["chosen_shown"])
    best = max(record["validation"], key=lambda v: v["mean"])
    return f"{shown} (val {best['mean']:.4f})"


def mlp_table() -> str:
    lines = [
        "| recipe (MLP 40-100-100-10, batch 100, 6000 steps) | grid (runs) | chosen on "
        "validation, seeds 10-11 | test accuracy, seeds 0-9, mean [95% CI] | paired "
        "difference vs AdamW + cosine [95% CI] |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for name in ("mlp_adamw_cosine", "mlp_adam_constant", "mlp_sgd_constant"):
        what, _ = TUNED[name]
        record = _tuned(name)
        paired = "—" if name == "mlp_adamw_cosine" else _paired(name, "mlp_adamw_cosine")
        lines.append(
            f"| {what} | {record['budget_runs']} | {_chosen(name)} | "
            f"{_interval(_by_seed(name).values())} | {paired} |"
        )
    what, _ = FIXED["mlp_paper_recipe"]
    lines.append(
        f"| {what} | 0 | — | {_interval(_by_seed('mlp_paper_recipe').values())} | "
        f"{_paired('mlp_paper_recipe', 'mlp_adamw_cosine')} |"
    )
    return "\n".join(lines) + "\n"


def grid_table(name: str) -> str:
    """Every grid point's validation accuracy (mean of the tuning seeds)."""
    record = _tuned(name)
    lines = ["| setting | val accuracy (seeds 10-11) |", "| --- | --- |"]
    for point in record["validation"]:
        setting = " ".join(f"`{s}`" for s in point["setting"]) or "—"
        mark = " (chosen)" if point["setting"] == record["chosen_shown"] else ""
        lines.append(f"| {setting} | {point['mean']:.4f}{mark} |")
    return "\n".join(lines) + "\n"


def _verdict(paper: float, values) -> str:
    """Reproduced: the paper's number is inside our 95% interval or below it (matched or
    beaten); partially: within 0.02 above it; not reproduced otherwise."""
    from fastdist.cli.stats import describe

    s = describe(list(values))
    if paper <= s.high:
        return "reproduced"
    return "partially" if paper - s.high <= 0.02 else "not reproduced"


def published_table() -> str:
    rows = [
        ("MNIST-1D logistic regression, tuned", PAPER["logistic"], "logistic"),
        ("MNIST-1D MLP, the paper's recipe as published", PAPER["mlp"], "mlp_paper_recipe"),
        ("MNIST-1D MLP, tuned (AdamW + cosine)", PAPER["mlp"], "mlp_adamw_cosine"),
        ("MNIST-1D CNN, tuned", PAPER["cnn"], "cnn"),
    ]
    lines = [
        "| result (Greydanus 2020) | paper | fastdist, seeds 0-9, mean [95% CI] | |",
        "| --- | ---: | --- | --- |",
    ]
    for label, paper, name in rows:
        if name not in FIXED and not (OUT / f"{name}.json").exists():
            continue
        values = list(_by_seed(name).values())
        verdict = _verdict(paper, values)
        lines.append(f"| {label} | ~{paper:.2f} | {_interval(values)} | {verdict} |")
    return "\n".join(lines) + "\n"


def book_tables() -> dict[str, str]:
    out = {"published": published_table(), "mlp": mlp_table()}
    for name in ("mlp_adamw_cosine", "cnn"):
        if (OUT / f"{name}.json").exists():
            out[f"grid_{name}"] = grid_table(name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("run", "collect", "tables"))
    stage = parser.parse_args().stage
    if stage == "run":
        run()
    elif stage == "collect":
        collect()
    else:
        for block, text in book_tables().items():
            print(f"<!-- book:recipes/{block} -->\n{text}")


if __name__ == "__main__":
    main()
