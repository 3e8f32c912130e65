"""fastdist-tune: choose a setting on the validation split, then score it once, on
fresh seeds, on the test set.

    fastdist-tune OUT experiment=mnist1d_mlp optimizer.lr=0.003,0.01,0.02,0.03 \\
        optimizer.weight_decay=0,0.1,0.3,1 --tune-seeds 10,11 --seeds 0,1,2,3,4

Two sweeps, both ``fastdist -m`` (warm workers from job to job):

1. ``OUT/tune``: every point of the grid (the overrides with commas, as ``-m`` reads
   them) on each tuning seed, with ``validation_fraction`` rows held out of training
   (0.1 unless the overrides set it). Each run's final model is scored on that split.
2. ``OUT/final``: the point with the highest mean validation accuracy (a tie: the first
   in table order) on the fresh seeds, disjoint from the tuning seeds; the same
   validation split is held out, so the chosen model trains on exactly what it was
   chosen with.

The tuning runs' test scores are never read. ``OUT/tuning.json`` records the grid, the
budget (grid points x tuning seeds: give a baseline the same budget), every point's
validation accuracy, the choice, and the fresh seeds' test accuracy with its 95%
t-interval; ``OUT/tuning.md`` is the same as a table. A stage already complete in OUT
(a ``done`` marker) is not run again, so an interrupted tuning resumes where it stopped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

from fastdist.cli.help import command_parser, quiet_on_broken_pipe

__all__ = ["main", "split_grid", "choose"]

_DEFAULT_FRACTION = "0.1"


def split_grid(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The fixed overrides, and the swept keys with their values (``key=a,b,c``, as
    ``fastdist -m`` reads them; a bracketed list value is one value)."""
    fixed, grid = [], {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"fastdist-tune: error: {item!r} is not KEY=VALUE")
        if "," in value and not value.lstrip().startswith(("[", "{")):
            grid[key] = [v.strip() for v in value.split(",")]
        else:
            fixed.append(item)
    return fixed, grid


def _seeds(text: str, flag: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"fastdist-tune: error: {flag} takes integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"fastdist-tune: error: {flag} needs distinct seeds, got {text!r}")
    return seeds


def _sweep(where: Path, overrides: list[str], seeds: list[int]) -> None:
    if (where / "done").exists():
        return
    command = [sys.executable, "-m", "fastdist", "-m", *overrides]
    command += [f"seed={','.join(map(str, seeds))}"]
    if not any(item.startswith("quiet=") for item in overrides):
        command.append("quiet=true")
    command += [f"hydra.sweep.dir={where}", "hydra.sweep.subdir=${hydra.job.num}"]
    print("fastdist " + " ".join(command[3:]), flush=True)
    run = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if run.returncode != 0:
        cause = (run.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"fastdist-tune: error: the sweep into {where} failed: {cause}")
    (where / "done").touch()


def choose(cells) -> tuple[object, list[tuple[object, object]]]:
    """(the chosen cell, [(cell, validation summary)]): the highest mean validation
    accuracy, the first in table order on a tie; cells without a score are left out."""
    from fastdist.cli.stats import describe

    scored = [(cell, describe(cell.values("validation_accuracy"))) for cell in cells]
    scored = [(cell, val) for cell, val in scored if val.n]
    if not scored:
        raise SystemExit(
            "fastdist-tune: error: no tuning run has a final validation score "
            "(eval.every=0? a diverged grid?)"
        )
    chosen = max(scored, key=lambda pair: pair[1].mean)[0]
    return chosen, scored


def _cells(where: Path):
    from fastdist.cli.cells import make_cells
    from fastdist.cli.summarize import load_runs

    def warn(message: str) -> None:
        print(f"fastdist-tune: warning: {message}", file=sys.stderr)

    return make_cells(load_runs(where, warn), warn)


def tune(out: Path, overrides: list[str], tune_seeds: list[int], seeds: list[int]) -> dict:
    from fastdist.cli.stats import describe

    if set(tune_seeds) & set(seeds):
        raise SystemExit(
            "fastdist-tune: error: --seeds must be fresh: "
            f"{sorted(set(tune_seeds) & set(seeds))} also tune"
        )
    fixed, grid = split_grid(overrides)
    if any(item.partition("=")[0] in ("seed", "eval.every") for item in overrides):
        raise SystemExit(
            "fastdist-tune: error: the seeds are --tune-seeds/--seeds, and every run's "
            "final model is scored (leave seed and eval.every out)"
        )
    if not any(item.startswith("validation_fraction=") for item in fixed):
        fixed.append(f"validation_fraction={_DEFAULT_FRACTION}")
    swept = [f"{k}={','.join(v)}" for k, v in grid.items()]
    _sweep(out / "tune", [*fixed, *swept], tune_seeds)
    chosen, scored = choose(_cells(out / "tune"))
    _sweep(out / "final", list(chosen.setting), seeds)
    finals = _cells(out / "final")
    test = describe([v for cell in finals for v in cell.values("test_accuracy")])
    record = {
        "fixed": fixed,
        "grid": grid,
        "budget_runs": len(list(itertools.product(*grid.values()))) * len(tune_seeds),
        "tune_seeds": tune_seeds,
        "seeds": seeds,
        "validation": [
            {"setting": list(cell.shown), "n": val.n, "mean": val.mean, "std": val.std}
            for cell, val in scored
        ],
        "chosen": list(chosen.setting),
        "chosen_shown": list(chosen.shown),
        "test_accuracy": {
            "n": test.n,
            "mean": test.mean,
            "std": test.std,
            "ci95": [test.low, test.high],
            "by_seed": {
                str(seed): accuracy
                for cell in finals
                for seed, accuracy in cell.by_seed("test_accuracy").items()
            },
        },
    }
    (out / "tuning.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "tuning.md").write_text(_markdown(record, chosen, scored, test))
    return record


def _markdown(record: dict, chosen, scored, test) -> str:
    lines = [
        f"Grid: {record['budget_runs']} runs ({len(scored)} points x "
        f"{len(record['tune_seeds'])} tuning seeds {record['tune_seeds']}), scored on "
        "the validation split.",
        "",
        "| setting | n | val accuracy (mean ± std) | chosen |",
        "| --- | ---: | --- | --- |",
    ]
    for cell, val in scored:
        mark = "yes" if cell is chosen else ""
        lines.append(f"| {cell.setting_text} | {val.n} | {val.text()} | {mark} |")
    lines += [
        "",
        f"Chosen: {' '.join(record['chosen_shown']) or '(the only point)'}; its test "
        f"accuracy on fresh seeds {record['seeds']}: {test.text()} (n={test.n}; mean ± "
        "sample std [95% t-interval]). Only these runs' test scores were read.",
    ]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = command_parser("fastdist-tune", __doc__)
    parser.add_argument("out", help="directory for the two sweeps and tuning.json")
    parser.add_argument(
        "overrides", nargs="+", metavar="KEY=VALUE", help="fastdist overrides; a,b,c sweeps"
    )
    parser.add_argument("--tune-seeds", default="100,101", help="seeds scored on validation")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="fresh seeds scored on test")
    return parser


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tune_seeds = _seeds(args.tune_seeds, "--tune-seeds")
    seeds = _seeds(args.seeds, "--seeds")
    tune(out, list(args.overrides), tune_seeds, seeds)
    print((out / "tuning.md").read_text(), end="")
    print(f"written to {out / 'tuning.json'}")


if __name__ == "__main__":
    main()
