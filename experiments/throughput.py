"""Throughput scaling on W1 (experiments/README.md, section 4): samples/s of grad_avg
with 1 and 2 workers at per-worker batches 64, 128 and 256, five repeats each.

  python experiments/throughput.py run       # 30 runs into multirun/throughput/ (~2 min)
  python experiments/throughput.py collect   # results/throughput/runs.csv
  make book                                  # section 4's table

Time it with nothing else running: the numbers are wall-clock rates on a shared
2-core machine, and the CPU they came from is recorded in runs.csv.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from records import interval, read_csv, sweep_seeds, write_csv

from fastdist.cli.stats import describe

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "multirun" / "throughput"
OUT = ROOT / "experiments" / "results" / "throughput"
SEEDS = "0,1,2,3,4"  # repeats: the seed changes the data and the start, not the work
BATCHES = (64, 128, 256)
FIELDS = ("workers", "batch_size", "seed", "samples_per_second", "steps", "cpu")
FIELDS += ("gemm_peak_1t_before", "gemm_peak_1t_after")


def _gemm_peak() -> float:
    """One thread's float32 2048^3 GEMM rate now, GFLOP/s (benchmarks/peak.py, run as
    a child so that its thread pinning stays there)."""
    code = "from benchmarks.peak import gemm_peak; print(gemm_peak(1)['gflops'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def run() -> None:
    """The sweep, between two GEMM-peak measurements (the machine's speed then: a
    shared host's varies from hour to hour), recorded in multirun/throughput/peak.json."""
    if (RUNS / "done").exists():
        return
    before = _gemm_peak()
    sweep_seeds(RUNS, ["experiment=scaling"], SEEDS)
    peaks = {"before": before, "after": _gemm_peak()}
    (RUNS / "peak.json").write_text(json.dumps(peaks) + "\n")


def _cpu() -> str:
    """The CPU model, as /proc/cpuinfo names it (platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def collect() -> None:
    """runs.csv: one row per run (the sweep's metrics.json files)."""
    rows = []
    peaks = json.loads((RUNS / "peak.json").read_text())
    for path in sorted(RUNS.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        rows.append(
            {
                "workers": metrics["workers"],
                "batch_size": metrics["batch_size"],
                "seed": metrics["seed"],
                "samples_per_second": metrics["samples_per_second"],
                "steps": metrics["steps"],
                "cpu": _cpu(),
                "gemm_peak_1t_before": peaks["before"],
                "gemm_peak_1t_after": peaks["after"],
            }
        )
    rows.sort(key=lambda r: (r["batch_size"], r["workers"], r["seed"]))
    OUT.mkdir(parents=True, exist_ok=True)
    write_csv(OUT / "runs.csv", FIELDS, rows)
    print(f"wrote {OUT / 'runs.csv'} ({len(rows)} runs)")


def book_tables() -> dict[str, str]:
    """Section 4's table: samples/s per batch and worker count, and the speed-up of 2
    workers over 1, each as mean [95% t-interval] over the repeats (the speed-up
    paired by seed)."""
    floats = {"samples_per_second", "gemm_peak_1t_before", "gemm_peak_1t_after"}
    runs = read_csv(OUT / "runs.csv", {"workers", "batch_size", "seed", "steps"}, floats)
    rate = {(r["batch_size"], r["workers"], r["seed"]): r["samples_per_second"] for r in runs}
    lines = [
        "| batch per worker | 1 worker, samples/s | 2 workers, samples/s | speed-up (paired) |",
        "| ---: | --- | --- | --- |",
    ]
    for batch in BATCHES:
        one = {s: v for (b, w, s), v in rate.items() if b == batch and w == 1}
        two = {s: v for (b, w, s), v in rate.items() if b == batch and w == 2}
        ratio = describe([two[s] / one[s] for s in sorted(set(one) & set(two))])
        lines.append(
            f"| {batch} | {interval(one.values(), 0)} | {interval(two.values(), 0)} | "
            f"{ratio.mean:.2f} [{ratio.low:.2f}, {ratio.high:.2f}] |"
        )
    cpus = sorted({r["cpu"] for r in runs})
    first = runs[0]
    lines += [
        "",
        f"CPU: {', '.join(cpus)}; {len(runs)} runs of {first['steps']} steps; one thread's "
        f"GEMM peak {first['gemm_peak_1t_before']:.0f} GFLOP/s before the sweep and "
        f"{first['gemm_peak_1t_after']:.0f} after.",
    ]
    return {"table": "\n".join(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("run", "collect"))
    args = parser.parse_args()
    run() if args.stage == "run" else collect()


if __name__ == "__main__":
    main()
