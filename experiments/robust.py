"""Robust aggregation under simulated Byzantine workers, and compressed exchange, on
MNIST-1D with 8 workers (experiments/README.md, section 8). Four stages, each a set of
``fastdist -m`` sweeps (warm workers from job to job), run from the repository root:

  python experiments/robust.py tune       # lr (and centered clipping's tau) per rule and
                                          # partition, on the validation split, seeds 100-101
  python experiments/robust.py grid       # 0-3 attackers x 6 attacks x 7 rules x {iid,
                                          # dirichlet 0.3}, seeds 0-4, the tuned settings
  python experiments/robust.py compress   # accuracy against bytes: 7 compressors with and
                                          # without error feedback, seeds 0-4
  python experiments/robust.py tables     # runs.csv (one row per run) and tables.md

Runs go to multirun/robust/ (not committed); ``tables`` writes experiments/results/robust/:
runs.csv from the run directories, then chosen.json and tables.md from runs.csv alone, as
``experiments/book.py`` makes section 8's tables (:func:`book_tables`) on a clean clone.
Every choice is made on the validation split (10% of the training rows) of the tuning
seeds; the test accuracy of seeds 0-4 is read once, by ``tables``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from fastdist.combiners.aggregators import RULES
from fastdist.combiners.attacks import ATTACKS

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "multirun" / "robust"
OUT = ROOT / "experiments" / "results" / "robust"

WORKERS = 8
BASE = [
    "dataset=mnist1d",
    f"workers={WORKERS}",
    "model.hidden=[100,100]",
    "batch_size=32",
    "steps=200",
    "optimizer=sgd",  # momentum 0.9, applied after the rule (one shared state)
    "validation_fraction=0.1",
    "eval.every=200",  # the final model, scored on validation and test
    "diagnostics=false",
    "quiet=true",
]
ASSUMES_F = ("trimmed_mean", "krum", "multi_krum")  # rules told how many attackers
PARTITIONS = {"iid": ["partition=iid"], "dirichlet": ["partition=dirichlet", "partition.alpha=0.3"]}
LRS = (0.02, 0.05, 0.1, 0.2, 0.5)
TAUS = (0.1, 1.0, 10.0)  # centered clipping's radius, tuned with the rate
TUNE_SEEDS = (100, 101)
SEEDS = (0, 1, 2, 3, 4)
COMPRESSORS = ("fp16", "bf16", "int8", "topk", "randk", "powersgd")
# How the book names them: the partitions, and the compressors' defaults (conf/schema).
SHOWN = {
    "iid": "IID",
    "dirichlet": "Dirichlet 0.3",
    "powersgd": "powersgd rank 4",
    "topk": "topk 1%",
    "randk": "randk 1%",
}


def _rule_options(rule: str, attackers: int) -> list[str] | None:
    """The rule's overrides when it is told ``attackers`` (at least 1); None when the rule
    cannot work with that many among 8 workers (Krum: n >= 2f + 3)."""
    if rule not in ASSUMES_F:
        return [f"aggregate={rule}"]
    f = max(attackers, 1)
    if rule in ("krum", "multi_krum") and 2 * f + 3 > WORKERS:
        return None
    return [f"aggregate={rule}", f"aggregate.f={f}"]


def _sweep(stage: str, name: str, overrides: list[str]) -> None:
    """One ``fastdist -m`` sweep into multirun/robust/<stage>/<name> (skipped if done).

    A job whose loss diverges ends a Hydra sweep: it is kept as a result (its directory
    has the overrides and no metrics.json; :func:`_runs` reports it as diverged) and
    the jobs not yet run go on in further sweeps beside it."""
    where = RUNS / stage / name
    if (where / "done").exists():
        return
    command = [sys.executable, "-m", "fastdist", "-m", *BASE, *overrides]
    command += [f"hydra.sweep.dir={where}", "hydra.sweep.subdir=${hydra.job.num}"]
    print(" ".join(command[2:]), flush=True)
    run = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(run.stderr)
    if run.returncode != 0:
        cause = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "no message"
        failed = [
            job for job in where.glob("*/.hydra") if not (job.parent / "metrics.json").exists()
        ]
        if "loss became" not in cause or len(failed) != 1:
            raise SystemExit(f"{where}: the sweep failed: {cause}")
        (failed[0].parent / "diverged").write_text(cause + "\n")
        fixed, swept = _split(overrides)
        tried = {tuple(_value(job[k]) for k in swept) for job in _jobs(where)}
        left = [c for c in itertools.product(*swept.values()) if tuple(map(_value, c)) not in tried]
        for part, combos in enumerate(_products(left, len(swept))):
            values = [sorted({c[i] for c in combos}, key=str) for i in range(len(swept))]
            more = [f"{k}={','.join(v)}" for k, v in zip(swept, values)]
            _sweep(stage, f"{name}.{part}", [*fixed, *more])
    (where / "done").touch()


def _value(text: str) -> str:
    """An override's value as Hydra writes it back (``false`` comes back ``False``)."""
    return str(yaml.safe_load(text))


def _split(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The fixed overrides, and the swept keys with their values (``key=a,b,c``)."""
    fixed, swept = [], {}
    for item in overrides:
        key, value = item.split("=", 1)
        if "," in value and not value.startswith("["):
            swept[key] = value.split(",")
        else:
            fixed.append(item)
    return fixed, swept


def _products(combos: list[tuple], width: int) -> list[list[tuple]]:
    """``combos`` (in sweep order) as few blocks as possible, each a full product."""
    if not combos:
        return []
    sets = [{c[i] for c in combos} for i in range(width)]
    if len(combos) == math.prod(len(values) for values in sets):
        return [combos]
    blocks = []
    for first in dict.fromkeys(c[0] for c in combos):
        tails = [c[1:] for c in combos if c[0] == first]
        blocks += [[(first, *t) for t in block] for block in _products(tails, width - 1)]
    return blocks


def _jobs(where: Path) -> list[dict]:
    """The overrides of every job a sweep started (finished or not)."""
    jobs = []
    for path in where.glob("*/.hydra/overrides.yaml"):
        jobs.append(dict(item.split("=", 1) for item in yaml.safe_load(path.read_text())))
    return jobs


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def tune() -> None:
    for (partition, split), rule in itertools.product(PARTITIONS.items(), RULES):
        extra = [f"optimizer.lr={_csv(LRS)}", f"seed={_csv(TUNE_SEEDS)}"]
        if rule == "centered_clip":
            extra.append(f"aggregate.tau={_csv(TAUS)}")
        _sweep("tune", f"{partition}-{rule}", [*split, *_rule_options(rule, 0), *extra])


def chosen(runs: list[dict] | None = None) -> dict:
    """(partition, rule) -> the overrides with the best mean validation accuracy over
    the tuning seeds (ties: the smaller rate), from the tuning runs among ``runs`` (by
    default, read from multirun/robust/tune)."""
    scores: dict = defaultdict(list)
    for run in _runs("tune") if runs is None else (r for r in runs if r["stage"] == "tune"):
        key = (run["partition"], run["rule"], run["lr"], run.get("tau"))
        scores[key].append(run["val_accuracy"] or 0.0)  # a diverged run scores nothing
    best: dict = {}
    for (partition, rule, lr, tau), values in sorted(scores.items(), key=lambda kv: kv[0][2]):
        mean = sum(values) / len(values)
        if (partition, rule) not in best or mean > best[(partition, rule)][0]:
            best[(partition, rule)] = (mean, lr, tau)
    return {
        key: {"lr": lr, "tau": tau, "val_accuracy": mean} for key, (mean, lr, tau) in best.items()
    }


def _tuned(partition: str, rule: str) -> list[str]:
    pick = chosen()[(partition, rule)]
    out = [f"optimizer.lr={pick['lr']}"]
    if pick["tau"] is not None:
        out.append(f"aggregate.tau={pick['tau']}")
    return out


def grid(rules: tuple[str, ...] = RULES) -> None:
    for (partition, split), rule, f in itertools.product(PARTITIONS.items(), rules, range(4)):
        options = _rule_options(rule, f)
        if options is None:
            continue
        attack = [] if f == 0 else [f"byzantine.count={f}", f"byzantine.attack={_csv(ATTACKS)}"]
        overrides = [*split, *options, *_tuned(partition, rule), *attack, f"seed={_csv(SEEDS)}"]
        _sweep("grid", f"{partition}-{rule}-f{f}", overrides)


def compress() -> None:
    lr = _tuned("iid", "mean")
    seeds = f"seed={_csv(SEEDS)}"
    _sweep("compress", "none", [*PARTITIONS["iid"], *lr, seeds])
    for kind in COMPRESSORS:
        feedback = "compress.error_feedback=false,true"
        _sweep("compress", kind, [*PARTITIONS["iid"], *lr, f"compress={kind}", feedback, seeds])


def _runs(stage: str) -> list[dict]:
    """One dict per run of ``stage``: its settings (from its overrides) and scores (None
    for a run whose loss diverged: no metrics.json, a ``diverged`` file instead)."""
    out = []
    for path in sorted((RUNS / stage).glob("*/*/.hydra/overrides.yaml")):
        options = dict(item.split("=", 1) for item in yaml.safe_load(path.read_text()))
        job = path.parent.parent
        metrics = (
            json.loads((job / "metrics.json").read_text())
            if (job / "metrics.json").exists()
            else None
        )
        if metrics is None and not (job / "diverged").exists():
            print(f"warning: {job} has no result (still running?): left out", file=sys.stderr)
            continue
        val = None
        if metrics is not None:
            last = metrics["evaluations"][-1]
            assert metrics["eval_split"] == "validation" and last["step"] == metrics["steps"]
            val = last["accuracy"]
        kind = options.get("compress", "none")
        feedback = options.get("compress.error_feedback")
        if feedback is not None:
            feedback = _value(feedback)  # "True" / "False", as Hydra writes it
        elif kind != "none":  # the compressor's own default
            feedback = str(kind in ("topk", "randk", "powersgd"))
        out.append(
            {
                "stage": stage,
                "partition": options["partition"],
                "rule": options.get("aggregate", "mean"),
                "f": int(options.get("byzantine.count", 0)),
                "attack": options.get("byzantine.attack", "none"),
                "compress": kind,
                "error_feedback": feedback,
                "lr": float(options["optimizer.lr"]),
                "tau": float(options["aggregate.tau"]) if "aggregate.tau" in options else None,
                "seed": int(options["seed"]),
                "diverged": metrics is None,
                "val_accuracy": val,
                "test_accuracy": None if metrics is None else metrics["test_accuracy"],
                "bytes_per_worker": None if metrics is None else metrics["comm_bytes_per_worker"],
                "train_seconds": None if metrics is None else metrics["train_seconds"],
            }
        )
    return out


# runs.csv's columns other than text; an empty field is None.
_TYPES = {
    "f": int,
    "seed": int,
    "lr": float,
    "tau": float,
    "diverged": lambda text: {"True": True, "False": False}[text],
    "val_accuracy": float,
    "test_accuracy": float,
    "bytes_per_worker": float,
    "train_seconds": float,
}


def load_runs(path: Path | None = None) -> list[dict]:
    """runs.csv (by default the committed one) as the dicts :func:`_runs` made
    (``error_feedback`` stays "True", "False" or None)."""
    with open(path or OUT / "runs.csv", newline="") as fh:
        return [
            {k: None if v == "" else _TYPES.get(k, str)(v) for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def _interval(values: list[float | None]) -> str:
    """mean [95% t-interval] over the seeds whose loss stayed finite, and how many
    diverged (None)."""
    from scipy import stats

    finite = [v for v in values if v is not None]
    diverged = len(values) - len(finite)
    note = f" ({diverged}/{len(values)} diverged)" if diverged else ""
    n = len(finite)
    if n == 0:
        return f"diverged ({diverged}/{len(values)})"
    mean = sum(finite) / n
    if n < 2:
        return f"{mean:.3f}{note}"
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]{note}"


def _cells(runs: list[dict]) -> dict:
    """(partition, rule, attackers, attack) -> the grid's test accuracies (seeds 0-4)."""
    cells: dict = defaultdict(list)
    for run in (r for r in runs if r["stage"] == "grid"):
        cells[(run["partition"], run["rule"], run["f"], run["attack"])].append(run["test_accuracy"])
    return cells


def _worst(cells: dict, partition: str, rule: str, attackers: int) -> tuple[str, str] | None:
    """(mean [interval], attack) of the attack with the lowest mean accuracy (a
    diverged seed counts as 0.1, chance); None when none was run."""
    found = [(a, cells.get((partition, rule, attackers, a))) for a in ATTACKS]
    found = [(a, v) for a, v in found if v]
    if not found:
        return None
    attack, values = min(found, key=lambda av: _chance_mean(av[1]))
    return _interval(values), attack


def _worst_case(cells: dict) -> list[str]:
    """Per partition and rule: the accuracy without attackers, and for 1-3 attackers
    the worst attack's."""
    lines = []
    for partition in PARTITIONS:
        lines += ["", f"## {partition}: the worst of the six attacks", ""]
        lines.append("| rule | no attackers | 1 attacker | 2 attackers | 3 attackers |")
        lines.append("| --- | --- | --- | --- | --- |")
        for rule in RULES:
            honest = cells.get((partition, rule, 0, "none"))
            row = [_interval(honest) if honest else _missing(rule, 0)]
            for f in (1, 2, 3):
                worst = _worst(cells, partition, rule, f)
                row.append(": ".join(worst) if worst else _missing(rule, f))
            lines.append(f"| {rule} | " + " | ".join(row) + " |")
    return lines


def _chance_mean(values: list[float | None]) -> float:
    return sum(0.1 if v is None else v for v in values) / len(values)


def _missing(rule: str, attackers: int, short: bool = False) -> str:
    """What an empty cell means."""
    if _rule_options(rule, attackers) is None:
        return "n/a" if short else "n/a (n < 2f + 3)"
    return "not run"


def _compression(runs: list[dict]) -> list[tuple[str, str | None, float, float, str]]:
    """(compressor, error feedback, bytes per worker, x fewer than uncompressed, test
    accuracy) per compressor and error-feedback setting, in COMPRESSORS order."""
    groups: dict = defaultdict(list)
    for run in (r for r in runs if r["stage"] == "compress"):
        groups[(run["compress"], run["error_feedback"])].append(run)
    full = next(r["bytes_per_worker"] for r in groups[("none", None)])
    rows = []
    for kind, feedback in itertools.product(("none", *COMPRESSORS), (None, "False", "True")):
        group = groups.get((kind, feedback))
        if not group:
            continue
        sent = next(r["bytes_per_worker"] for r in group if r["bytes_per_worker"] is not None)
        accuracy = _interval([r["test_accuracy"] for r in group])
        rows.append((kind, feedback, sent, full / sent, accuracy))
    return rows


_FEEDBACK = {None: "", "False": "no", "True": "yes"}


def _row(cells: list[str]) -> str:
    """A markdown table row (an empty cell as ``| |``)."""
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def book_tables(runs: list[dict]) -> dict[str, str]:
    """Section 8's tables in experiments/README.md, by block name: ``attacks`` (per
    partition, each rule without attackers and at its worst attack with 1-3 attackers)
    and ``compression`` (accuracy against megabytes sent, fewest bytes last)."""
    cells = _cells(runs)
    attacks = []
    for partition in PARTITIONS:
        if attacks:
            attacks.append("")
        columns = ["no attackers", *(f"{f} of {WORKERS}" for f in (1, 2, 3))]
        attacks += [_row([SHOWN[partition], *columns]), _row(["---"] * 5)]
        for rule in RULES:
            honest = cells.get((partition, rule, 0, "none"))
            row = [_interval(honest) if honest else _missing(rule, 0, short=True)]
            for f in (1, 2, 3):
                worst = _worst(cells, partition, rule, f)
                row.append(" ".join(worst) if worst else _missing(rule, f, short=True))
            attacks.append(_row([rule, *row]))
    compression = [
        "| compress | error feedback | MB sent per worker | x fewer | test accuracy |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for kind, feedback, sent, fewer, accuracy in sorted(_compression(runs), key=lambda r: -r[2]):
        shown = [SHOWN.get(kind, kind), _FEEDBACK[feedback], f"{sent / 1e6:.3g}", f"{fewer:.0f}"]
        compression.append(_row([*shown, accuracy]))
    return {"attacks": "\n".join(attacks), "compression": "\n".join(compression)}


def chosen_json(runs: list[dict]) -> str:
    """chosen.json: the tuned settings, from the tuning rows of ``runs``."""
    picks = chosen(runs)
    return json.dumps({f"{p}/{r}": v for (p, r), v in sorted(picks.items())}, indent=2) + "\n"


def tables() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    runs = [run for stage in ("tune", "grid", "compress") for run in _runs(stage)]
    with open(OUT / "runs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(runs[0]))
        writer.writeheader()
        writer.writerows(runs)
    runs = load_runs(OUT / "runs.csv")  # from here on, runs.csv alone (as experiments/book.py)
    (OUT / "chosen.json").write_text(chosen_json(runs))
    (OUT / "tables.md").write_text(tables_md(runs))
    print(f"wrote {OUT / 'runs.csv'} ({len(runs)} runs) and {OUT / 'tables.md'}")


def tables_md(runs: list[dict]) -> str:
    """tables.md: every cell of the grid and the compression table, from ``runs``."""
    picks = chosen(runs)
    cells = _cells(runs)
    lines = ["# Robust aggregation and compressed exchange: MNIST-1D, 8 workers", ""]
    lines += [
        "Test accuracy, mean [95% t-interval] over seeds 0-4 (n per cell in runs.csv).",
        "Rates (and tau) chosen per rule and partition on validation, seeds 100-101:",
        "",
        "| partition | rule | lr | tau | val accuracy (tuning) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (partition, rule), pick in sorted(picks.items()):
        tau = "" if pick["tau"] is None else pick["tau"]
        lines.append(
            f"| {partition} | {rule} | {pick['lr']} | {tau} | {pick['val_accuracy']:.3f} |"
        )
    lines += _worst_case(cells)
    for partition in PARTITIONS:
        lines += ["", f"## {partition}: no attackers", "", "| rule | test accuracy |"]
        lines.append("| --- | --- |")
        for rule in RULES:
            values = cells.get((partition, rule, 0, "none"))
            lines.append(f"| {rule} | {_interval(values) if values else _missing(rule, 0)} |")
        for f in (1, 2, 3):
            lines += ["", f"## {partition}: {f} of {WORKERS} workers attack", ""]
            lines.append("| rule | " + " | ".join(ATTACKS) + " |")
            lines.append("| --- |" + " --- |" * len(ATTACKS))
            for rule in RULES:
                row = []
                for attack in ATTACKS:
                    values = cells.get((partition, rule, f, attack))
                    row.append(_interval(values) if values else _missing(rule, f))
                lines.append(f"| {rule} | " + " | ".join(row) + " |")
    lines += ["", "## Compression (iid, grad_avg, no attackers)", ""]
    lines.append("| compress | error feedback | bytes per worker | x fewer | test accuracy |")
    lines.append("| --- | --- | ---: | ---: | --- |")
    for kind, feedback, sent, fewer, accuracy in _compression(runs):
        shown = _FEEDBACK[feedback]
        lines.append(f"| {kind} | {shown} | {sent:.3g} | {fewer:.0f} | {accuracy} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("tune", "grid", "compress", "tables", "all"))
    parser.add_argument("--rules", nargs="+", choices=RULES, default=RULES, help="grid only")
    args = parser.parse_args()
    for step in ("tune", "grid", "compress", "tables") if args.stage == "all" else (args.stage,):
        if step == "grid":
            grid(tuple(args.rules))
        else:
            globals()[step]()


if __name__ == "__main__":
    main()
