"""``python -m benchmarks.sweep_overhead``: what a sweep of small jobs costs beyond its
training, cold and warm, and against another checkout side by side.

The sweep is the issue's: ``fastdist -m dataset=digits workers=2 epochs=5
seed=0,...,N-1`` with Hydra's basic launcher (jobs one after another in one process).
For each contender, per job: wall time of the whole sweep / N, training time (the
workers' ``train_seconds`` from metrics.json), and the overhead (the difference). A
single run of the same job is timed too. Rounds are interleaved (A B C, A B C, ...) so
every contender sees the same background load; medians are reported.

    python -m benchmarks.sweep_overhead --jobs 20 --rounds 3 --base /tmp/base17

``--base DIR`` adds a checkout of another commit (e.g. ``git worktree add /tmp/base
<commit>``), run through the same interpreter with ``PYTHONPATH=DIR``. ``--experiment``
times a multirun of any other overrides instead (e.g. a combiner_ablation subset).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.child_env import ROOT, child_env

__all__ = ["main", "time_sweep", "time_single"]

JOB = ["dataset=digits", "workers=2", "epochs=5"]


def _command(checkout: Path) -> tuple[list[str], dict]:
    """``python -m fastdist`` importing fastdist from ``checkout`` (the same command for
    every checkout: an older one may lack the console script's entry module)."""
    env = child_env(checkout=checkout)
    env.pop("FASTDIST_DEBUG", None)
    return [sys.executable, "-m", "fastdist"], env


def _run(checkout: Path, args: list[str], out: Path) -> float:
    cmd, env = _command(checkout)
    start = time.perf_counter()
    proc = subprocess.run(
        [*cmd, *args], env=env, cwd=out, capture_output=True, text=True, timeout=3600
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{' '.join(args[:4])} failed: {tail}")
    return wall


def _train_seconds(directory: Path) -> list[float]:
    return [
        json.loads(p.read_text())["train_seconds"] for p in sorted(directory.rglob("metrics.json"))
    ]


def time_sweep(checkout: Path, overrides: list[str], work: Path) -> dict:
    """One multirun: total wall, jobs, wall/job, train/job, overhead/job."""
    sweep_dir = work / f"sweep-{time.monotonic_ns()}"
    wall = _run(checkout, ["-m", *overrides, f"hydra.sweep.dir={sweep_dir}"], work)
    trained = _train_seconds(sweep_dir)
    shutil.rmtree(sweep_dir, ignore_errors=True)
    n = max(len(trained), 1)
    return {
        "wall": wall,
        "jobs": len(trained),
        "wall_per_job": wall / n,
        "train_per_job": sum(trained) / n,
        "overhead_per_job": (wall - sum(trained)) / n,
    }


def time_single(checkout: Path, overrides: list[str], work: Path) -> dict:
    run_dir = work / f"run-{time.monotonic_ns()}"
    wall = _run(checkout, [*overrides, f"hydra.run.dir={run_dir}"], work)
    trained = _train_seconds(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"wall": wall, "train": sum(trained)}


def _median(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base", type=Path, help="another checkout to compare with")
    parser.add_argument("--experiment", nargs="+", help="overrides of another multirun")
    parser.add_argument("--no-single", action="store_true", help="skip the single runs")
    parser.add_argument("--no-cold", action="store_true", help="skip pool.reuse=false")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)

    seeds = "seed=" + ",".join(str(s) for s in range(args.jobs))
    sweep = args.experiment or [*JOB, seeds]
    contenders: dict[str, tuple[Path, list[str]]] = {}
    if args.base:
        contenders["base"] = (args.base.resolve(), sweep)
    if not args.no_cold:
        contenders["cold"] = (ROOT, [*sweep, "pool.reuse=false"])
    contenders["warm"] = (ROOT, [*sweep, "pool.reuse=true"])
    singles = {}
    if not args.no_single:
        if args.base:
            singles["base single"] = (args.base.resolve(), JOB)
        singles["single"] = (ROOT, JOB)

    results: dict[str, list[dict]] = {name: [] for name in [*contenders, *singles]}
    with tempfile.TemporaryDirectory(prefix="fastdist-sweep-bench-") as tmp:
        work = Path(tmp)
        for _ in range(args.rounds):
            for name, (checkout, overrides) in contenders.items():
                results[name].append(time_sweep(checkout, overrides, work))
                print(name, json.dumps(results[name][-1]), flush=True)
            for name, (checkout, overrides) in singles.items():
                results[name].append(time_single(checkout, overrides, work))
                print(name, json.dumps(results[name][-1]), flush=True)

    cpu = _cpu_model()
    print(f"CPU: {cpu}, {os.cpu_count()} CPUs; {args.rounds} interleaved rounds, medians")
    print(f"sweep: fastdist -m {' '.join(sweep)}")
    print(f"{'':12} {'jobs':>5} {'wall s':>8} {'s/job':>7} {'train/job':>10} {'overhead/job':>13}")
    for name in contenders:
        rounds = results[name]
        print(
            f"{name:12} {rounds[0]['jobs']:5d} {_median(rounds, 'wall'):8.2f} "
            f"{_median(rounds, 'wall_per_job'):7.3f} {_median(rounds, 'train_per_job'):10.3f} "
            f"{_median(rounds, 'overhead_per_job'):13.3f}"
        )
    for name in singles:
        print(f"{name:12} {'1':>5} {_median(results[name], 'wall'):8.2f}")
    warm = _median(results["warm"], "wall")
    if "cold" in results:
        print(f"cold/warm sweep wall: {_median(results['cold'], 'wall') / warm:.2f}x")
    if args.base:
        print(f"base/warm sweep wall: {_median(results['base'], 'wall') / warm:.2f}x")
        if singles:
            ratio = _median(results["base single"], "wall") / _median(results["single"], "wall")
            print(f"base/this single-run wall: {ratio:.2f}x")
    if args.json:
        payload = {"cpu": cpu, "sweep": sweep, "rounds": results}
        args.json.write_text(json.dumps(payload, indent=2))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
