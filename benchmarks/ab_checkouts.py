"""W1 and W2 samples/s of this checkout against another one, side by side, interleaved.

    git worktree add /tmp/base <commit>
    python -m benchmarks.ab_checkouts --base /tmp/base --rounds 5

A refactor must not make training slower; this measures it the way the performance
table does (fastdist's rate over the history windows after the same warm-up steps,
``benchmarks.warmup``), running the ``fastdist`` CLI of each checkout in turn (its
``PYTHONPATH`` pointing at that checkout) so both see the same machine state. Reports
the median of each, the ratio new/base per round and its median, and the CPU. Time it
with nothing else running.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.child_env import ROOT, child_env
from benchmarks.warmup import rate_after

WARMUP = 5
WORKLOADS = {
    "w1": ["experiment=w1", "workers=2", "steps=45"],
    "w2": ["experiment=w2", "workers=2", "steps=1500"],
}
COMMON = ["diagnostics=false", "progress=off", "quiet=true", f"history.every={WARMUP}"]


def cpu_name() -> str:
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def rate(checkout: Path, workload: str, out: Path) -> float:
    """samples/s of one run of ``workload`` by the fastdist of ``checkout``."""
    env = child_env(checkout=checkout)
    args = [*WORKLOADS[workload], *COMMON, f"hydra.run.dir={out}"]
    subprocess.run(
        [sys.executable, "-m", "fastdist", *args], cwd=checkout, env=env, check=True, timeout=600
    )
    with (out / "history.csv").open(newline="") as fh:
        return rate_after(csv.DictReader(fh), WARMUP)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", default="w1,w2")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    checkouts = {"base": args.base.resolve(), "new": ROOT}
    results: dict = {w: {"base": [], "new": []} for w in args.workloads.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for workload, runs in results.items():
                # Alternate which goes first, so neither always runs on a warmer machine.
                order = ("base", "new") if r % 2 == 0 else ("new", "base")
                for name in order:
                    out = Path(tmp) / f"{workload}-{name}-{r}"
                    runs[name].append(rate(checkouts[name], workload, out))
                print(
                    f"round {r}: {workload} base {runs['base'][-1]:.0f} new {runs['new'][-1]:.0f} "
                    f"samples/s, new/base {runs['new'][-1] / runs['base'][-1]:.3f}",
                    flush=True,
                )
    print(f"CPU: {cpu_name()}, {os.cpu_count()} CPUs; command: {' '.join(sys.argv)}")
    summary = {}
    for workload, runs in results.items():
        ratios = [n / b for n, b in zip(runs["new"], runs["base"])]
        summary[workload] = {
            **runs,
            "ratios": ratios,
            "median_ratio": statistics.median(ratios),
            "median_base": statistics.median(runs["base"]),
            "median_new": statistics.median(runs["new"]),
        }
        line = summary[workload]
        print(
            f"{workload}: base {line['median_base']:.0f}, new {line['median_new']:.0f} "
            f"samples/s (medians); new/base per round {', '.join(f'{x:.3f}' for x in ratios)}; "
            f"median {line['median_ratio']:.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "results": summary}, indent=2))


if __name__ == "__main__":
    main()
