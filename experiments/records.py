"""What the book's experiment scripts share: one ``fastdist-tune`` call per cell, their
per-run CSV files (written and read back typed) and how a table shows an interval or a
family of paired comparisons. Imported by the scripts beside it (``python
experiments/<name>.py`` and book.py put this folder on the import path)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from fastdist.cli.stats import Comparison, compare_family, describe

__all__ = [
    "TUNING_FIELDS",
    "chosen_setting",
    "collect_cells",
    "compare",
    "interval",
    "paired_text",
    "read_csv",
    "sweep_seeds",
    "tune_cell",
    "tuned_dir",
    "values",
    "write_csv",
]

ROOT = Path(__file__).resolve().parents[1]
TUNING_FIELDS = ("cell", "setting", "val_accuracy_mean", "n", "chosen")


def tuned_dir(where: Path) -> Path | None:
    """Where a cell's tuning.json is: ``where``, or ``where.smaller`` (its grid
    shortened by :func:`tune_cell`); None while the cell has not been tuned."""
    for place in (where, where.with_name(where.name + ".smaller")):
        if (place / "tuning.json").exists():
            return place
    return None


def tune_cell(where: Path, fixed: list[str], grid: str, tune_seeds: str, seeds: str) -> Path:
    """``fastdist-tune where *fixed grid`` (``grid``: one ``key=a,b,c`` override), run
    from the repository root, skipped when the cell is done; the directory holding its
    tuning.json. A grid whose run diverges is tuned again without its last value, once,
    in ``where.smaller`` (its tuning.json then records the shorter grid)."""
    done = tuned_dir(where)
    if done is not None:
        return done
    while True:
        command = [sys.executable, "-m", "fastdist.cli.tune", str(where), *fixed, grid]
        command += ["--tune-seeds", tune_seeds, "--seeds", seeds]
        run = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        if run.returncode == 0:
            return where
        cause = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "no message"
        key, _, listed = grid.partition("=")
        options = listed.split(",")
        if "loss became" not in cause or len(options) < 3 or where.name.endswith(".smaller"):
            raise SystemExit(f"{where}: {cause}")
        print(f"{where}: {cause}; tuning again without {key}={options[-1]}", file=sys.stderr)
        grid = f"{key}={','.join(options[:-1])}"
        where = where.with_name(where.name + ".smaller")


def collect_cells(
    names: Iterable[str],
    runs_root: Path,
    out: Path,
    run_fields: tuple[str, ...],
    run_row: Callable[[str, dict, str], dict],
) -> None:
    """The tuned cells ``names`` (under ``runs_root``) into ``out``/tuning.csv, every
    grid point of every cell (TUNING_FIELDS: its swept setting, mean validation accuracy
    over the tuning seeds, the chosen one marked), and ``out``/runs.csv, one row per
    fresh seed: ``run_row(cell, metrics, chosen setting)``. A cell not tuned yet is
    left out, with a warning."""
    runs, tuning = [], []
    for name in names:
        where = tuned_dir(runs_root / name)
        if where is None:
            print(f"{name}: not run yet; left out", file=sys.stderr)
            continue
        record = json.loads((where / "tuning.json").read_text())
        chosen = [item for item in record["chosen"] if item.split("=", 1)[0] in record["grid"]]
        for point in record["validation"]:
            tuning.append(
                {
                    "cell": name,
                    "setting": " ".join(point["setting"]),
                    "val_accuracy_mean": point["mean"],
                    "n": point["n"],
                    "chosen": "yes" if point["setting"] == chosen else "",
                }
            )
        for path in sorted((where / "final").glob("*/metrics.json")):
            runs.append(run_row(name, json.loads(path.read_text()), " ".join(chosen)))
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "runs.csv", run_fields, runs)
    write_csv(out / "tuning.csv", TUNING_FIELDS, tuning)
    print(f"wrote {out / 'runs.csv'} ({len(runs)} runs) and tuning.csv ({len(tuning)} points)")


def chosen_setting(tuning: list[dict], cell: str) -> str | None:
    """The setting ``cell`` chose on validation (``key=value``), from tuning.csv."""
    picked = [t["setting"] for t in tuning if t["cell"] == cell and t["chosen"]]
    return picked[0] if picked else None


def sweep_seeds(where: Path, fixed: list[str], seeds: str) -> None:
    """``fastdist -m *fixed seed=<seeds>`` into ``where`` (skipped when done): a setting
    fixed in advance, nothing chosen, scored on the test set."""
    if (where / "done").exists():
        return
    command = [sys.executable, "-m", "fastdist", "-m", *fixed, f"seed={seeds}", "quiet=true"]
    command += [f"hydra.sweep.dir={where}", "hydra.sweep.subdir=${hydra.job.num}"]
    run = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    if run.returncode != 0:
        cause = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "no message"
        raise SystemExit(f"{where}: {cause}")
    (where / "done").touch()


def values(runs: list[dict], cell: str, key: str = "test_accuracy") -> dict[int, float]:
    """seed -> ``key`` of the rows of ``cell`` that have it."""
    return {r["seed"]: r[key] for r in runs if r["cell"] == cell and r[key] is not None}


def write_csv(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    """``rows`` under the header ``fields`` (a missing key: an empty cell)."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path, ints: set[str], floats: set[str]) -> list[dict]:
    """A CSV written by :func:`write_csv` back as dicts: an empty cell is None, the
    ``ints`` and ``floats`` columns are numbers, the rest text."""

    def typed(key: str, value: str):
        if value == "":
            return None
        return int(value) if key in ints else float(value) if key in floats else value

    with open(path, newline="") as fh:
        return [{k: typed(k, v) for k, v in row.items()} for row in csv.DictReader(fh)]


def interval(values: Iterable[float | None], digits: int = 3) -> str:
    """``mean [low, high]``, the 95% t-interval over ``values``."""
    s = describe(list(values))
    if s.n == 0:
        return "missing"
    if s.n < 2:
        return f"{s.mean:.{digits}f} (n=1)"
    return f"{s.mean:.{digits}f} [{s.low:.{digits}f}, {s.high:.{digits}f}]"


def paired_text(comparison: Comparison, digits: int = 3) -> str:
    """``+mean [low, high]`` of the paired differences, then its mark (``*``, ``≈``)."""
    d = comparison.test.diff
    if d.n < 2:
        return "n/a"
    low, high = (d.low, d.high) if d.std > 0 else (d.mean, d.mean)
    mark = f" {comparison.mark}" if comparison.mark else ""
    return f"{d.mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]{mark}"


def compare(
    pairs: Mapping[str, tuple[Mapping[int, float | None], Mapping[int, float | None]]],
    margin: float,
) -> dict[str, str]:
    """:func:`~fastdist.cli.stats.compare_family` over ``pairs``, each as
    :func:`paired_text`."""
    return {name: paired_text(c) for name, c in compare_family(pairs, margin).items()}
