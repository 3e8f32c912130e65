"""Merging models from a pretrained base on MNIST-1D (experiments/README.md, section 9):
model soups and task-vector merges of fine-tunes, loss barriers before and after
permutation alignment against width, and merging fine-tunes on different class subsets.
Stages, each a set of ``fastdist -m`` sweeps (warm workers from job to job) or
``fastdist-combine`` calls, run from the repository root:

  python experiments/merging.py tune      # seeds 100-101: the base recipe, then single
                                          # fine-tunes at 7 rates; picks the large rate of
                                          # the second soup grid and the class-subset
                                          # fine-tunes' rate, on validation accuracy only
  python experiments/merging.py train     # seeds 0-4: bases; (a) 4 fine-tunes per grid;
                                          # (b) 2 independent models per width; (c) class-
                                          # subset fine-tunes (shards, Dirichlet 0.1)
  python experiments/merging.py combine   # fastdist-combine on the saved states; each run's
                                          # results merged into its merging.json
  python experiments/merging.py tables    # runs.csv (one row per run and method),
                                          # tuning.csv, tables.md, chosen.json

Runs go to multirun/merging/ (not committed); ``tables`` writes
experiments/results/merging/. Every choice (the large rate, the class-subset rate, each
merge's lambda or density, the greedy soup, the best ingredient) is made on the
validation split (10% of the training rows, a function of the seed: a base and its
fine-tunes share it, and no fine-tune trains on it); the test set is read once per run
and method, by fastdist-combine, and summarised by ``tables``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml
from records import read_csv, write_csv

from fastdist.cli.stats import compare_family, describe

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "multirun" / "merging"
OUT = ROOT / "experiments" / "results" / "merging"
COMBINE = str(Path(sys.executable).with_name("fastdist-combine"))

TUNE_SEEDS = (100, 101)
SEEDS = (0, 1, 2, 3, 4)

COMMON = [
    "dataset=mnist1d",
    "validation_fraction=0.1",
    "batch_size=32",
    "optimizer=sgd",  # momentum 0.9
    "quiet=true",
]
# The base ("pretrained") model, fixed a priori: the 40-100-100-10 MLP, 10 epochs of
# momentum SGD at a constant 0.05 on the training rows, one worker.
MLP = "model.hidden=[100,100]"
BASE = [*COMMON, MLP, "workers=1", "combiner=weight_avg", "optimizer.lr=0.05", "epochs=10"]
BASE += ["save_model=true", "diagnostics=false"]
# Fine-tunes, fixed a priori: 10 epochs, cosine decay from the rate to 0.
FINE_TUNE = [*COMMON, MLP, "schedule=cosine", "epochs=10", "diagnostics=false"]
TUNE_LRS = (0.003, 0.01, 0.03, 0.1, 0.15, 0.2, 0.3, 0.5)
# (a) Soup ingredients: 4 fine-tunes of one base on the whole training set, each in its
# own order, at 4 rates. The "small" grid is fixed a priori; the "large" grid swaps its
# smallest rate for the first rate past the edge of stability (chosen(), tune stage).
SMALL_GRID = (0.003, 0.01, 0.03, 0.1)
SOUP_METHODS = (
    "best_member",
    "soup_uniform",
    "soup_greedy",
    "ensemble",
    "fisher_avg",
    "model_stock",
    "task_arithmetic",
    "ties",
    "dare",
    "dare_ties",
)
SELECTING = ("task_arithmetic", "ties", "dare", "dare_ties")  # combiner.select=val
# (b) Two models from independent initialisations, each trained on the whole training
# set in its own order, 20 epochs of momentum SGD at 0.05 (fixed a priori).
WIDTHS = (16, 64, 256, 1024)
CNN_CHANNELS = (25, 100)  # cnn1d_mnist1d (25 channels) and 4x wider
BARRIER = [*COMMON, "workers=2", "partition=replicate", "combiner=aligned_avg"]
BARRIER += ["combiner.init=independent", "optimizer.lr=0.05", "epochs=20", "eval.every=2240"]
BARRIER += ["save_states=true", "diagnostics=false"]
# (c) Fine-tunes of the base on different class subsets.
TASK_PARTITIONS = {
    "shards2x5": ["workers=2", "partition=shards", "partition.classes_per_worker=5"],
    "dirichlet0.1x4": ["workers=4", "partition=dirichlet", "partition.alpha=0.1"],
}
TASK_SMALL_LR = 0.01  # beside the tuned rate (task_lr): a fine-tune that stays close
TASK_METHODS = SOUP_METHODS  # every method, against the base


# ------------------------------------------------------------------ running sweeps


def _sweep(where: Path, fixed: list[str], swept: dict[str, list[str]] | None = None) -> None:
    """One ``fastdist -m`` sweep into ``where`` (skipped if done): ``fixed`` overrides,
    and every combination of the ``swept`` values (key -> list of values, each value
    one Hydra override value: ``[0.1,0.2]`` is one list).

    A job whose loss diverges ends a Hydra sweep: it is kept as a result (its directory
    has the overrides and no metrics.json, and a ``diverged`` file) and the jobs not yet
    run go on, one sweep each, in ``where.1``, ``where.2``, ... beside it."""
    if (where / "done").exists():
        return
    swept = swept or {}
    command = [sys.executable, "-m", "fastdist", "-m", *fixed]
    command += [f"{key}={','.join(values)}" for key, values in swept.items()]
    command += [f"hydra.sweep.dir={where}", "hydra.sweep.subdir=${hydra.job.num}"]
    print(" ".join(command[2:]), flush=True)
    run = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(run.stderr[-4000:])
    if run.returncode != 0:
        cause = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "no message"
        failed = [
            job for job in where.glob("*/.hydra") if not (job.parent / "metrics.json").exists()
        ]
        if "loss became" not in cause or len(failed) != 1:
            raise SystemExit(f"{where}: the sweep failed: {cause}")
        (failed[0].parent / "diverged").write_text(cause + "\n")
        tried = {tuple(_value(job[k]) for k in swept) for job in _jobs(where)}
        left = [
            combo
            for combo in itertools.product(*swept.values())
            if tuple(map(_value, combo)) not in tried
        ]
        for part, combo in enumerate(left, 1):
            more = [f"{key}={value}" for key, value in zip(swept, combo)]
            _sweep(where.with_name(f"{where.name}.{part}"), [*fixed, *more])
    (where / "done").touch()


def _value(text: str) -> str:
    """An override's value as Hydra writes it back (``true`` comes back ``True``)."""
    return str(yaml.safe_load(text))


def _options(job: Path) -> dict[str, str]:
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    return dict(item.split("=", 1) for item in overrides)


def _jobs(where: Path) -> list[dict]:
    """The overrides of every job a sweep started (finished or not)."""
    return [_options(path.parent.parent) for path in where.glob("*/.hydra/overrides.yaml")]


def _job_dirs(pattern: str) -> list[Path]:
    """Every job directory under RUNS matching ``pattern/<num>``, sorted."""
    return sorted(path.parent.parent for path in RUNS.glob(f"{pattern}/*/.hydra/overrides.yaml"))


def _strs(values) -> list[str]:
    return [str(v) for v in values]


def _list(values) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def _metrics(job: Path) -> dict | None:
    path = job / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def _final_validation(metrics: dict) -> float:
    last = metrics["evaluations"][-1]
    assert metrics["eval_split"] == "validation" and last["step"] == metrics["steps"]
    return last["accuracy"]


def _base_dir(stage: str, seed: int) -> Path:
    """The base run of ``seed`` (its model.npz is the fine-tunes' init_from)."""
    for job in _job_dirs(f"{stage}/base*"):
        if int(_options(job)["seed"]) == seed and (job / "model.npz").exists():
            return job
    raise SystemExit(f"no base model for seed {seed} under {RUNS / stage}: run that stage")


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------ stages


def tune() -> None:
    _sweep(RUNS / "tune" / "base", BASE, {"seed": _strs(TUNE_SEEDS)})
    for seed in TUNE_SEEDS:
        base = _relative(_base_dir("tune", seed))
        fixed = [*FINE_TUNE, "workers=1", "combiner=weight_avg", f"seed={seed}"]
        fixed.append(f"init_from={base}")
        _sweep(RUNS / "tune" / f"ft-s{seed}", fixed, {"optimizer.lr": _strs(TUNE_LRS)})


def _tuning_rows() -> list[dict]:
    """The tune stage as rows (seed, lr, val_accuracy): each tuning seed's base (lr
    "base") and its single fine-tunes (a diverged one: val_accuracy None)."""
    rows = [
        {"seed": s, "lr": "base", "val_accuracy": _final_validation(_metrics(_base_dir("tune", s)))}
        for s in TUNE_SEEDS
    ]
    for job in _job_dirs("tune/ft-s*"):
        metrics, options = _metrics(job), _options(job)
        rows.append(
            {
                "seed": int(options["seed"]),
                "lr": options["optimizer.lr"],
                "val_accuracy": None if metrics is None else _final_validation(metrics),
            }
        )
    return rows


def chosen(tuning: list[dict]) -> dict:
    """From the tuning seeds' validation accuracy (mean over the seeds; a diverged
    fine-tune scores 0): ``large_lr``, the smallest rate whose single fine-tune ends
    below the base it started from (the first rate past the edge: an ingredient that
    left the base's basin and did not fully recover; the large grid's top rate), and
    ``task_lr``, the rate of the best single fine-tune (ties: the smaller rate), one of
    the class-subset fine-tunes' two rates."""
    base = [row["val_accuracy"] for row in tuning if row["lr"] == "base"]
    scores: dict = defaultdict(list)
    for row in tuning:
        if row["lr"] != "base":
            scores[float(row["lr"])].append(row["val_accuracy"] or 0.0)
    mean = {lr: sum(v) / len(v) for lr, v in sorted(scores.items())}
    base_mean = sum(base) / len(base)
    return {
        "base_val_accuracy": base_mean,
        "fine_tune_val_accuracy": {str(lr): acc for lr, acc in mean.items()},
        "large_lr": min(lr for lr, acc in mean.items() if acc < base_mean),
        "task_lr": max(mean, key=lambda lr: (mean[lr], -lr)),
    }


def grids(picks: dict) -> dict[str, tuple[float, ...]]:
    """(a)'s two grids of fine-tuning rates, by name."""
    return {"small": SMALL_GRID, "large": (*SMALL_GRID[1:], picks["large_lr"])}


def task_arms(picks: dict) -> dict[str, list[str]]:
    """(c)'s arms: each partition at the tuned rate and at 0.01 (a small step)."""
    rates = sorted({TASK_SMALL_LR, picks["task_lr"]})
    return {
        f"{name}-lr{lr}": [*partition, f"optimizer.lr={lr}"]
        for name, partition in TASK_PARTITIONS.items()
        for lr in rates
    }


def train(parts: tuple[str, ...] = ("soup", "barrier", "tasks")) -> None:
    picks = chosen(_tuning_rows()) if "soup" in parts or "tasks" in parts else {}
    if "soup" in parts or "tasks" in parts:
        _sweep(RUNS / "soup" / "base", BASE, {"seed": _strs(SEEDS)})
    if "soup" in parts:
        values = [_list(grid) for grid in grids(picks).values()]
        for seed in SEEDS:
            fixed = [*FINE_TUNE, "workers=4", "partition=replicate", "combiner=soup_uniform"]
            fixed += [f"seed={seed}", f"init_from={_relative(_base_dir('soup', seed))}"]
            fixed.append("save_states=true")
            _sweep(RUNS / "soup" / f"ft-s{seed}", fixed, {"worker_overrides.optimizer.lr": values})
    if "barrier" in parts:
        seeds = _strs(SEEDS)
        widths = [f"[{w},{w}]" for w in WIDTHS]
        _sweep(RUNS / "barrier" / "mlp", BARRIER, {"model.hidden": widths, "seed": seeds})
        channels = [f"[{c},{c},{c}]" for c in CNN_CHANNELS]
        cnn = [*BARRIER, "model=cnn1d_mnist1d"]
        _sweep(RUNS / "barrier" / "cnn", cnn, {"model.channels": channels, "seed": seeds})
    if "tasks" in parts:
        for seed in SEEDS:
            fixed = [*FINE_TUNE, "combiner=weight_avg", f"seed={seed}", "save_states=true"]
            fixed.append(f"init_from={_relative(_base_dir('soup', seed))}")
            for name, options in task_arms(picks).items():
                _sweep(RUNS / "tasks" / f"{name}-s{seed}", [*fixed, *options])


def _combine_calls(group: str) -> list[tuple[list[str], list[str]]]:
    """(combiners, extra arguments) of each fastdist-combine call a run of ``group``
    gets. KEY=VALUE options apply to every combiner of a call, hence the split."""
    if group == "barrier":  # the diagnostics: barriers before and after alignment
        return [(["aligned_avg", "weight_avg"], ["--diagnostics"])]
    methods = SOUP_METHODS if group == "soup" else TASK_METHODS
    plain = [m for m in methods if m not in SELECTING]
    chosen_on_val = [m for m in methods if m in SELECTING]
    return [(plain, []), (chosen_on_val, ["combiner.select=val"])]


def combine(parts: tuple[str, ...] = ("soup", "barrier", "tasks")) -> None:
    for group in parts:
        for job in _job_dirs(f"{group}/*"):
            if not (job / "worker_states.npz").exists() or not (job / "metrics.json").exists():
                continue
            results_file = job / "merging.json"
            results = json.loads(results_file.read_text()) if results_file.exists() else {}
            for names, extra in _combine_calls(group):
                if all(name in results for name in names):
                    continue
                command = [COMBINE, _relative(job), *names, *extra]
                print(" ".join(command[1:]), flush=True)
                run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                if run.returncode != 0:
                    print(f"  failed: {run.stderr.strip()}", file=sys.stderr)
                    continue
                results.update(json.loads((job / "combine_metrics.json").read_text()))
                results_file.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------ tables
#
# ``tables`` collects the run directories into two committed CSVs (runs.csv: one row per
# run and method; tuning.csv: the tune stage); everything after that, here and in
# experiments/book.py, reads those CSVs alone, so the book regenerates on a clean clone.

BARRIER_KEYS = (
    "loss_barrier_test",
    "aligned_loss_barrier_test",
    "loss_barrier_train",
    "aligned_loss_barrier_train",
    "mean_member_test_accuracy",
    "ensemble_test_accuracy",
    "weight_avg_test_accuracy",
)
RUN_FIELDS = ("part", "arm", "seed", "method", "val_accuracy", "test_accuracy", "test_loss")
RUN_FIELDS += ("choice", *BARRIER_KEYS, "run")
TUNING_FIELDS = ("seed", "lr", "val_accuracy")
_FLOATS = {"val_accuracy", "test_accuracy", "test_loss", *BARRIER_KEYS}
# TOST margin of "equal within a point": how (a) tells "as good as the best ingredient"
# from "not shown different" (Wortsman et al.'s greedy-soup claim is >=, not >).
MARGIN = 0.01


def _choice(metrics: dict) -> str:
    """What the combiner chose (on validation) or computed, as a short string."""
    for key in ("combiner_scale", "combiner_density", "combiner_best", "combiner_soup"):
        if key in metrics:
            return f"{key[9:]}={metrics[key]}"
    if "combiner_ratio" in metrics:
        ratios = list(metrics["combiner_ratio"].values())
        return f"mean_ratio={sum(ratios) / len(ratios):.3f}"
    return ""


def _chosen_val(metrics: dict) -> float | None:
    """The validation accuracy at the chosen grid point (selecting combiners only)."""
    if "combiner_grid" not in metrics:
        return None
    key = next(k for k in ("combiner_scale", "combiner_density") if k in metrics)
    return metrics["combiner_val_accuracy"][metrics["combiner_grid"].index(metrics[key])]


def _arm(group: str, job: Path, options: dict[str, str], names: dict[str, str]) -> str:
    if group == "soup":
        return names[_list(yaml.safe_load(options["worker_overrides.optimizer.lr"]))]
    if group == "tasks":
        return job.parent.name.rsplit("-s", 1)[0]
    if "model.channels" in options:
        return f"cnn{yaml.safe_load(options['model.channels'])[0]}"
    return f"mlp{yaml.safe_load(options['model.hidden'])[0]}"


def _runs(picks: dict) -> list[dict]:
    """Every scored run under multirun/merging as rows: the bases (the reference of
    every (a) and (c) arm) and each merged run's methods from its merging.json."""
    rows = []
    for job in _job_dirs("soup/base*"):
        metrics = _metrics(job)
        for arm in (*grids(picks), *task_arms(picks)):
            rows.append(
                {
                    "part": "a" if arm in ("small", "large") else "c",
                    "arm": arm,
                    "seed": int(_options(job)["seed"]),
                    "method": "base",
                    "val_accuracy": _final_validation(metrics),
                    "test_accuracy": metrics["test_accuracy"],
                    "test_loss": metrics["test_loss"],
                    "choice": "",
                    "run": _relative(job),
                }
            )
    names = {_list(grid): name for name, grid in grids(picks).items()}
    for group, part in (("soup", "a"), ("tasks", "c"), ("barrier", "b")):
        for job in _job_dirs(f"{group}/*"):
            if group == "soup" and job.parent.name.startswith("base"):
                continue
            options = _options(job)
            results_file = job / "merging.json"
            if (job / "diverged").exists() or not results_file.exists():
                print(f"warning: {job} has no merged results: left out", file=sys.stderr)
                continue
            for method, metrics in json.loads(results_file.read_text()).items():
                row = {
                    "part": part,
                    "arm": _arm(group, job, options, names),
                    "seed": int(options["seed"]),
                    "method": method,
                    "val_accuracy": _chosen_val(metrics),
                    "test_accuracy": metrics["test_accuracy"],
                    "test_loss": metrics["test_loss"],
                    "choice": _choice(metrics),
                    "run": _relative(job),
                }
                if group == "barrier":
                    row.update({key: metrics.get(key) for key in BARRIER_KEYS})
                rows.append(row)
    return sorted(rows, key=lambda r: (r["part"], r["arm"], r["method"], r["seed"]))


def load_runs(path: Path | None = None) -> list[dict]:
    """runs.csv (by default the committed one)."""
    return read_csv(path or OUT / "runs.csv", {"seed"}, _FLOATS)


def load_tuning(path: Path | None = None) -> list[dict]:
    """tuning.csv (by default the committed one)."""
    return read_csv(path or OUT / "tuning.csv", {"seed"}, _FLOATS)


def _pm(values, digits: int = 3) -> str:
    """mean ± 95% t-interval half-width."""
    summary = describe(values)
    if summary.n == 0:
        return "missing"
    if summary.n < 2:
        return f"{summary.mean:.{digits}f} (n=1)"
    return f"{summary.mean:.{digits}f} ± {summary.half_width:.{digits}f}"


def _by_seed(runs: list[dict], arm: str, key: str = "test_accuracy") -> dict[str, dict]:
    """method -> {seed: value} for one arm."""
    out: dict = defaultdict(dict)
    for row in runs:
        if row["arm"] == arm:
            out[row["method"]][row["seed"]] = row[key]
    return out


def _comparisons(pairs: dict[str, tuple[dict, dict]]) -> dict[str, str]:
    """Paired comparisons, seed by seed, of each ``name -> (candidate, baseline)``:
    ``mean diff ± half-width`` of the 95% t-interval, ``*`` when the paired t-test
    rejects "no difference" after Holm's correction over the whole family given (so a
    table's stars hold together), ``≈`` when TOST shows the difference within ±MARGIN
    (also Holm-corrected), and wins/losses out of the seeds."""
    shown = {}
    for name, c in compare_family(pairs, MARGIN).items():
        d = c.test.diff
        if d.n < 2:
            shown[name] = "n/a"
            continue
        mark = f" {c.mark}" if c.mark else ""
        half = d.half_width if d.std > 0 else 0.0
        sign = "+" if d.mean >= 0 else ""
        shown[name] = f"{sign}{d.mean:.3f} ± {half:.3f}{mark} ({c.wins}/{c.losses})"
    return shown


def _method_table(runs: list[dict], arm: str, methods: tuple[str, ...], baseline: str) -> list[str]:
    """tables.md's table of one (a) or (c) arm: every method's test accuracy and loss,
    its paired difference from ``baseline``, and what it chose on validation."""
    accuracy, loss = _by_seed(runs, arm), _by_seed(runs, arm, "test_loss")
    choices: dict = defaultdict(list)
    for row in runs:
        if row["arm"] == arm and row["choice"]:
            choices[row["method"]].append(row["choice"].split("=", 1)[1])
    compared = [m for m in methods if m != baseline and m in accuracy]
    diffs = _comparisons({m: (accuracy[m], accuracy[baseline]) for m in compared})
    lines = [
        f"| method | n | test accuracy | paired diff. vs {baseline} (wins/losses) | test loss "
        "| chosen on validation (per seed) |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    for method in ("base", *methods):
        if method not in accuracy:
            lines.append(f"| {method} | 0 | missing | | | |")
            continue
        values = accuracy[method]
        lines.append(
            f"| {method} | {len(values)} | {_pm(list(values.values()))} | "
            f"{diffs.get(method, '')} | {_pm(list(loss[method].values()))} | "
            f"{'; '.join(choices[method])} |"
        )
    return lines


def _barrier_order(arm: str) -> tuple:
    return (arm.startswith("cnn"), int(arm.lstrip("mlpcn")))


def _barrier_table(runs: list[dict]) -> list[str]:
    """(b): barriers before and after alignment, and accuracies, per model; then the
    widest minus the narrowest model's aligned barriers, paired by seed."""
    cells: dict = defaultdict(lambda: defaultdict(dict))
    for row in runs:
        if row["part"] == "b" and row["method"] == "aligned_avg":
            for key in BARRIER_KEYS:
                cells[row["arm"]][key][row["seed"]] = row[key]
            cells[row["arm"]]["aligned_avg"][row["seed"]] = row["test_accuracy"]
    lines = [
        "| model | n | test barrier | test barrier, aligned | train barrier "
        "| train barrier, aligned | mean member acc. | weight avg acc. | aligned avg acc. "
        "| ensemble acc. |",
        "| --- | ---: | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = (*BARRIER_KEYS[:5], "weight_avg_test_accuracy", "aligned_avg", "ensemble_test_accuracy")
    for arm in sorted(cells, key=_barrier_order):
        name = f"MLP [{arm[3:]},{arm[3:]}]" if arm.startswith("mlp") else f"CNN {arm[3:]} channels"
        shown = [_pm(list(cells[arm][key].values())) for key in keys]
        lines.append(f"| {name} | {len(cells[arm]['aligned_avg'])} | " + " | ".join(shown) + " |")
    pairs = {}
    for prefix, label in (("mlp", "MLP"), ("cnn", "CNN")):
        mine = sorted((a for a in cells if a.startswith(prefix)), key=_barrier_order)
        for key in ("aligned_loss_barrier_test", "aligned_loss_barrier_train") if mine else ():
            name = f"{label} {mine[-1][3:]} minus {mine[0][3:]}, {key}"
            pairs[name] = (cells[mine[-1]][key], cells[mine[0]][key])
    lines += ["", "Widest minus narrowest model, aligned barrier, paired by seed (* and ≈: "]
    lines[-1] += f"Holm over these {len(pairs)}):"
    lines.append("")
    lines += [f"- {name}: {diff}" for name, diff in _comparisons(pairs).items()]
    return lines


def _tuning_table(picks: dict) -> list[str]:
    rates = picks["fine_tune_val_accuracy"]
    return [
        "| fine-tuning rate | " + " | ".join(rates) + " |",
        "| --- |" + " ---: |" * len(rates),
        "| val. accuracy | " + " | ".join(f"{v:.3f}" for v in rates.values()) + " |",
        "",
        f"Base: {picks['base_val_accuracy']:.3f}. Chosen: large_lr = {picks['large_lr']}, "
        f"task_lr = {picks['task_lr']}.",
    ]


def _overview(
    runs: list[dict], arms: list[str], methods: tuple[str, ...], baseline: str
) -> list[str]:
    """One row per method, one column per arm: the paired difference from ``baseline``
    (the baseline's row: its test accuracy). Holm over each column's comparisons."""
    columns = {}
    for arm in arms:
        accuracy = _by_seed(runs, arm)
        compared = [m for m in methods if m != baseline and m in accuracy]
        columns[arm] = _comparisons({m: (accuracy[m], accuracy[baseline]) for m in compared})
        columns[arm][baseline] = _pm(list(accuracy[baseline].values()))
    lines = ["| method | " + " | ".join(arms) + " |", "| --- |" + " --- |" * len(arms)]
    for method in (baseline, *(m for m in methods if m != baseline)):
        lines.append(
            f"| {method} | " + " | ".join(columns[a].get(method, "missing") for a in arms) + " |"
        )
    return lines


def book_tables(runs: list[dict], tuning: list[dict]) -> dict[str, str]:
    """Section 9's tables in experiments/README.md, by block name: ``tuning``, ``soup``
    (both grids vs the best ingredient), ``barrier`` and ``tasks`` (every class-subset
    arm vs the base)."""
    picks = chosen(tuning)
    soup = _overview(runs, list(grids(picks)), ("base", *SOUP_METHODS), "best_member")
    tasks = _overview(runs, list(task_arms(picks)), TASK_METHODS, "base")
    return {
        "tuning": "\n".join(_tuning_table(picks)),
        "soup": "\n".join(soup),
        "barrier": "\n".join(_barrier_table(runs)),
        "tasks": "\n".join(tasks),
    }


def chosen_json(tuning: list[dict]) -> str:
    return json.dumps(chosen(tuning), indent=2) + "\n"


def tables_md(runs: list[dict], tuning: list[dict]) -> str:
    """tables.md: every arm's full table (accuracy, loss, choices), from the CSVs."""
    picks = chosen(tuning)
    lines = ["# Merging from a pretrained base: MNIST-1D", ""]
    lines += [
        "Test accuracy, mean ± 95% t-interval half-width over seeds 0-4; paired differences",
        "seed by seed, mean ± half-width (wins/losses out of the seeds); * : the paired",
        "t-test rejects no difference, ≈ : TOST shows it within ±0.01, both at 5% after",
        "Holm's correction over the table's comparisons.",
        "",
        "Tuning seeds 100-101, validation accuracy of single fine-tunes of the base:",
        "",
        *_tuning_table(picks),
    ]
    for name, grid in grids(picks).items():
        lines += ["", f"## (a) Soup: 4 fine-tunes at rates {list(grid)} ({name} grid)", ""]
        lines += _method_table(runs, name, SOUP_METHODS, "best_member")
    lines += ["", "## (b) Loss barriers between independently initialised models", ""]
    lines += _barrier_table(runs)
    for name in task_arms(picks):
        lines += ["", f"## (c) Fine-tunes on class subsets: {name}", ""]
        lines += _method_table(runs, name, TASK_METHODS, "base")
    return "\n".join(lines) + "\n"


def tables() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tuning = _tuning_rows()
    write_csv(OUT / "tuning.csv", TUNING_FIELDS, tuning)
    write_csv(OUT / "runs.csv", RUN_FIELDS, _runs(chosen(tuning)))
    runs, tuning = load_runs(), load_tuning()  # from here on, the CSVs alone (as book.py)
    (OUT / "chosen.json").write_text(chosen_json(tuning))
    (OUT / "tables.md").write_text(tables_md(runs, tuning))
    print(f"wrote {OUT / 'runs.csv'} ({len(runs)} rows), tuning.csv, tables.md, chosen.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("tune", "train", "combine", "tables", "all"))
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("soup", "barrier", "tasks"),
        default=("soup", "barrier", "tasks"),
        help="train or combine only these parts: (a) soup, (b) barrier, (c) tasks",
    )
    args = parser.parse_args()
    for step in ("tune", "train", "combine", "tables") if args.stage == "all" else (args.stage,):
        if step in ("train", "combine"):
            globals()[step](tuple(args.parts))
        else:
            globals()[step]()


if __name__ == "__main__":
    main()
