"""Which combiner, how many workers, and does averaging survive independent
initialisations? (experiments/README.md, sections 1 and 2, re-run: issue 25.)

Every cell (dataset, combiner, workers, step regime) is one ``fastdist-tune`` call: the
rate is chosen on the validation split of tuning seeds 100-101 from the same grid for
every cell (the baselines get the same budget as the methods they are compared with),
then the chosen rate runs on fresh seeds 0-4, scored on the test set once. From the
repository root:

  python experiments/ablation.py run       # every cell, into multirun/ablation/ (~16 min)
  python experiments/ablation.py collect   # results/ablation/runs.csv and tuning.csv
  make book                                # the README's tables from those two files

Section 1 removes the step confound by reporting two regimes side by side: ``epochs``
(20 epochs per worker: with N workers each trains on 1/N of the rows, so it takes 1/N
of the steps) and ``steps`` (every worker takes as many steps as one worker does in 20
epochs, i.e. N times the epochs over its shard). Section 2 adds the shared-initialisation
arm with section 2's own recipe.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from records import (
    chosen_setting,
    collect_cells,
    compare,
    interval,
    read_csv,
    sweep_seeds,
    tune_cell,
    tuned_dir,
    values,
    write_csv,
)

from fastdist.cli.stats import matched_differences, paired_test

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "multirun" / "ablation"
OUT = ROOT / "experiments" / "results" / "ablation"

TUNE_SEEDS = "100,101"
SEEDS = "0,1,2,3,4"
GRID = "optimizer.lr=0.01,0.02,0.05,0.1"  # 4 points x 2 tuning seeds in every cell
DATASETS = ("digits", "mnist1d")
# One worker's steps in 20 epochs (batch 32, 10% validation held out): the "steps"
# regime gives every worker this many, whatever N.
STEPS_OF_ONE = {"digits": 740, "mnist1d": 2240}
MARGIN = 0.01  # TOST margin of "as good as": one point of accuracy

# Section 1: shared initialisation for every combiner (aligned_avg, made for
# independent ones, is section 2's); soup_uniform left out: with a shared
# initialisation it is weight_avg, number for number (the previous table).
COMBINERS = (
    "grad_avg",
    "local_sgd",  # period 8 (its default), not tuned
    "hogwild",
    "ensemble",
    "weight_avg",
    "soup_greedy",
    "fisher_avg",
)
ABLATION = [
    "model.hidden=[64]",
    "batch_size=32",
    "optimizer=sgd",  # momentum 0.9
    "combiner.init=shared",
    "diagnostics=false",
]
WORKERS = (2, 4)  # and 1, grad_avg only: with one worker every combiner is plain SGD

# Section 2: two workers, MLP 128-128, 30 epochs; independent initialisations, and the
# same recipe from one shared initialisation.
INDEPENDENT = ["model.hidden=[128,128]", "batch_size=32", "optimizer=sgd", "workers=2"]
INDEPENDENT += ["epochs=30"]
INIT_ARMS = {
    "weight_avg/independent": ["combiner=weight_avg", "combiner.init=independent"],
    "aligned_avg/independent": ["combiner=aligned_avg", "combiner.init=independent"],
    "ensemble/independent": ["combiner=ensemble", "combiner.init=independent"],
    "weight_avg/shared": ["combiner=weight_avg", "combiner.init=shared"],
    "ensemble/shared": ["combiner=ensemble", "combiner.init=shared"],
}


# lr_scaling (Goyal et al. 2017), evaluated: grad_avg with N workers at equal epochs
# (global batch N x 32) from one worker's tuned rate, times 1, N or sqrt(N), after a
# linear warm-up over the first 5% of the steps; nothing tuned (the rule is the choice),
# compared with the rate tuned for that N.
SCALING_RULES = ("none", "linear", "sqrt")
WARMUP = "schedule.warmup_fraction=0.05"


def scaling_cells() -> dict[str, list[str]]:
    """The lr_scaling cells (run after section 1: they start from one worker's chosen
    rate) -> their overrides."""
    out = {}
    for dataset in DATASETS:
        one = tuned_dir(RUNS / f"s1/{dataset}/one/grad_avg/w1")
        record = json.loads((one / "tuning.json").read_text())
        base = next(item for item in record["chosen"] if item.startswith("optimizer.lr="))
        for workers in WORKERS:
            for rule in SCALING_RULES:
                out[f"scaling/{dataset}/{rule}/w{workers}"] = [
                    f"dataset={dataset}",
                    *ABLATION,
                    "combiner=grad_avg",
                    f"workers={workers}",
                    "epochs=20",
                    base,
                    f"lr_scaling={rule}",
                    WARMUP,
                ]
    return out


def cells() -> dict[str, list[str]]:
    """Every cell's name (its directory under multirun/ablation) -> its fixed overrides."""
    out = {}
    for dataset in DATASETS:
        base = [f"dataset={dataset}", *ABLATION]
        out[f"s1/{dataset}/one/grad_avg/w1"] = [
            *base,
            "combiner=grad_avg",
            "workers=1",
            "epochs=20",
        ]
        for regime in ("epochs", "steps"):
            length = "epochs=20" if regime == "epochs" else f"steps={STEPS_OF_ONE[dataset]}"
            for workers in WORKERS:
                for combiner in COMBINERS:
                    name = f"s1/{dataset}/{regime}/{combiner}/w{workers}"
                    out[name] = [*base, f"combiner={combiner}", f"workers={workers}", length]
        for arm, options in INIT_ARMS.items():
            out[f"s2/{dataset}/{arm}"] = [f"dataset={dataset}", *INDEPENDENT, *options]
    return out


def run(only: str | None = None) -> None:
    """fastdist-tune on every cell (a finished cell is skipped; a grid that diverges is
    tuned again without its largest rate: :func:`records.tune_cell`)."""
    for name, fixed in cells().items():
        if not only or name.startswith(only):
            tune_cell(RUNS / name, fixed, GRID, TUNE_SEEDS, SEEDS)
    for name, fixed in scaling_cells().items():
        if not only or name.startswith(only):
            sweep_seeds(RUNS / name, fixed, SEEDS)


# ------------------------------------------------------------------ committed records

RUN_FIELDS = ("cell", "seed", "lr", "steps", "test_accuracy", "test_loss")
RUN_FIELDS += ("mean_member_test_accuracy", "accuracy_drop", "aligned_accuracy_drop")
_FLOATS = {"test_accuracy", "test_loss", "mean_member_test_accuracy", "accuracy_drop"}
_FLOATS |= {"aligned_accuracy_drop", "val_accuracy_mean"}
_INTS = {"seed", "steps", "n"}


def _run_row(cell: str, metrics: dict, chosen: str) -> dict:
    """runs.csv's row of one scored run: test accuracy and loss, the steps each worker
    took, and section 2's member mean and accuracy drops along the straight line
    between the two workers, raw and aligned."""
    line = metrics.get("interpolation") or {}
    aligned = metrics.get("aligned_interpolation") or {}
    return {
        "cell": cell,
        "seed": metrics["seed"],
        "lr": chosen.partition("=")[2],
        "steps": metrics["steps"],
        "test_accuracy": metrics["test_accuracy"],
        "test_loss": metrics["test_loss"],
        "mean_member_test_accuracy": metrics.get("mean_member_test_accuracy"),
        "accuracy_drop": line.get("accuracy_drop"),
        "aligned_accuracy_drop": aligned.get("accuracy_drop"),
    }


def collect() -> None:
    """runs.csv (one row per cell and fresh seed) and tuning.csv (every grid point),
    then the lr_scaling runs added to runs.csv (their ``lr``: the base rate, before
    scaling)."""
    collect_cells(cells(), RUNS, OUT, RUN_FIELDS, _run_row)
    runs = read_csv(OUT / "runs.csv", set(), set())
    for name, fixed in scaling_cells().items():
        base = next(item for item in fixed if item.startswith("optimizer.lr="))
        for path in sorted((RUNS / name).glob("*/metrics.json")):
            runs.append(_run_row(name, json.loads(path.read_text()), base))
    write_csv(OUT / "runs.csv", RUN_FIELDS, [{k: v or "" for k, v in r.items()} for r in runs])


def load() -> tuple[list[dict], list[dict]]:
    """The committed runs.csv and tuning.csv."""
    return (
        read_csv(OUT / "runs.csv", _INTS, _FLOATS),
        read_csv(OUT / "tuning.csv", _INTS, _FLOATS),
    )


# ------------------------------------------------------------------ the book's tables


def _chosen(tuning: list[dict], cell: str) -> str:
    setting = chosen_setting(tuning, cell)
    return setting.partition("=")[2] if setting else "?"


def combiners_table(runs: list[dict], tuning: list[dict], dataset: str) -> str:
    """Section 1, one dataset: rows combiners; per regime and worker count, the test
    accuracy [95% CI], the paired difference from grad_avg with the same workers and
    regime (Holm over the table), and the rate chosen on validation."""
    regimes = ("epochs", "steps")
    pairs = {}
    for regime in regimes:
        for workers in WORKERS:
            reference = values(runs, f"s1/{dataset}/{regime}/grad_avg/w{workers}")
            for combiner in COMBINERS[1:]:
                cell = f"s1/{dataset}/{regime}/{combiner}/w{workers}"
                pairs[cell] = (values(runs, cell), reference)
    diffs = compare(pairs, MARGIN)
    columns = [(r, w) for r in regimes for w in WORKERS]
    header = ["combiner", *(f"{w} workers, equal {r}" for r, w in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for combiner in COMBINERS:
        row = [combiner if combiner != "local_sgd" else "local_sgd (period 8)"]
        for regime, workers in columns:
            cell = f"s1/{dataset}/{regime}/{combiner}/w{workers}"
            shown = interval(values(runs, cell).values())
            if cell in diffs:
                shown += f"; {diffs[cell]}"
            row.append(f"{shown} (lr {_chosen(tuning, cell)})")
        lines.append("| " + " | ".join(row) + " |")
    one = f"s1/{dataset}/one/grad_avg/w1"
    steps = sorted({r["steps"] for r in runs if r["cell"].startswith(f"s1/{dataset}/")})
    lines += [
        "",
        f"One worker (plain SGD, {STEPS_OF_ONE[dataset]} steps): "
        f"{interval(values(runs, one).values())} (lr {_chosen(tuning, one)}). "
        f"Steps per worker in the table: {', '.join(map(str, steps))}.",
    ]
    return "\n".join(lines)


def independent_table(runs: list[dict], tuning: list[dict]) -> str:
    """Section 2: per dataset and arm, test accuracy, the members' mean, and the
    accuracy drop along the straight line between the two workers (raw and, for
    aligned_avg's runs, after alignment); paired differences from the shared-init
    weight average (Holm over the table)."""
    pairs = {}
    for dataset in DATASETS:
        reference = values(runs, f"s2/{dataset}/weight_avg/shared")
        for arm in INIT_ARMS:
            if arm != "weight_avg/shared":
                cell = f"s2/{dataset}/{arm}"
                pairs[cell] = (values(runs, cell), reference)
    diffs = compare(pairs, MARGIN)
    lines = [
        "| dataset | arm | test accuracy | vs weight_avg, shared init | members' mean "
        "| accuracy drop on the line (raw; aligned) | lr |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dataset in DATASETS:
        for arm in INIT_ARMS:
            cell = f"s2/{dataset}/{arm}"
            drop = interval(values(runs, cell, "accuracy_drop").values())
            aligned = values(runs, cell, "aligned_accuracy_drop")
            if aligned:
                drop += f"; {interval(aligned.values())}"
            lines.append(
                f"| {dataset} | {arm.replace('/', ', ')} init | "
                f"{interval(values(runs, cell).values())} | {diffs.get(cell, '—')} | "
                f"{interval(values(runs, cell, 'mean_member_test_accuracy').values())} | "
                f"{drop} | {_chosen(tuning, cell)} |"
            )
    return "\n".join(lines)


def published_rows(runs: list[dict]) -> str:
    """Lin et al. 2020's claim, local SGD generalises better than large-batch SGD at
    equal steps, as rows of the book's published-results table: 4 workers, equal
    steps, local_sgd (8 local steps, batch 32 each) minus grad_avg (global batch 128),
    each at its own tuned rate, paired by seed. Reproduced when the difference is
    positive and significant."""
    lines = [
        "| result | paper | fastdist, seeds 0-4: local SGD minus large batch [95% CI] | |",
        "| --- | --- | --- | --- |",
    ]
    for dataset in reversed(DATASETS):
        cell = f"s1/{dataset}/steps/{{}}/w4"
        diffs, _ = matched_differences(
            values(runs, cell.format("local_sgd")), values(runs, cell.format("grad_avg"))
        )
        test = paired_test(diffs, MARGIN)
        d = test.diff
        verdict = "reproduced" if d.n > 1 and d.low > 0 else "not reproduced"
        if verdict != "reproduced" and d.n > 1:
            verdict += " (no significant difference)" if d.high > 0 else " (worse)"
        lines.append(
            f"| local SGD (H=8) beats large-batch SGD at equal steps (Lin et al. 2020), "
            f"{dataset} MLP, 4 workers | better | {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}] "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def scaling_table(runs: list[dict], tuning: list[dict]) -> str:
    """lr_scaling against the rate tuned for N: per dataset and worker count, each
    rule's test accuracy and its paired difference from the tuned cell (Holm over the
    table)."""
    pairs = {}
    for dataset in DATASETS:
        for workers in WORKERS:
            tuned = values(runs, f"s1/{dataset}/epochs/grad_avg/w{workers}")
            for rule in SCALING_RULES:
                cell = f"scaling/{dataset}/{rule}/w{workers}"
                pairs[cell] = (values(runs, cell), tuned)
    diffs = compare(pairs, MARGIN)
    columns = [(d, w) for d in DATASETS for w in WORKERS]
    lines = [
        "| rate | " + " | ".join(f"{d}, {w} workers" for d, w in columns) + " |",
        "|" + " --- |" * (len(columns) + 1),
    ]
    row = ["tuned for N (section 1)"]
    for dataset, workers in columns:
        cell = f"s1/{dataset}/epochs/grad_avg/w{workers}"
        row.append(f"{interval(values(runs, cell).values())} (lr {_chosen(tuning, cell)})")
    lines.append("| " + " | ".join(row) + " |")
    for rule in SCALING_RULES:
        row = [f"one worker's rate x {dict(none='1', linear='N', sqrt='sqrt(N)')[rule]}"]
        for dataset, workers in columns:
            cell = f"scaling/{dataset}/{rule}/w{workers}"
            row.append(f"{interval(values(runs, cell).values())}; {diffs[cell]}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def book_tables() -> dict[str, str]:
    """Sections 1 and 2's tables, by README block name, and section 1's rows of the
    published-results table."""
    runs, tuning = load()
    out = {f"combiners_{d}": combiners_table(runs, tuning, d) for d in DATASETS}
    out["independent"] = independent_table(runs, tuning)
    out["published"] = published_rows(runs)
    out["scaling"] = scaling_table(runs, tuning)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("run", "collect", "cells"))
    parser.add_argument("--only", help="run only the cells whose name starts with this")
    args = parser.parse_args()
    if args.stage == "run":
        run(args.only)
    elif args.stage == "collect":
        collect()
    else:
        for name, fixed in cells().items():
            print(name, " ".join(fixed))


if __name__ == "__main__":
    main()
