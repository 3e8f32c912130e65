"""Soak: many synchronous steps of W2 with 2 workers; resident memory must not grow.

    python -m benchmarks.soak [--steps 10000]

Samples the RSS of the coordinator and of every worker every 0.1 s while the run
trains, and prints the sum at the first sample after training started and at the last
sample before it ended (growth beyond 5% would mean a per-step leak).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and b"spawn_main" in cmd:
                out.append(int(entry))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastdist",
                "experiment=w2",
                "workers=2",
                f"steps={args.steps}",
                "diagnostics=false",
                f"hydra.run.dir={tmp}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        samples = []  # (seconds, coordinator kB, workers kB)
        started = time.monotonic()
        while proc.poll() is None:
            workers = _children(proc.pid)
            if len(workers) == 2:
                samples.append(
                    (
                        time.monotonic() - started,
                        _rss_kb(proc.pid),
                        sum(_rss_kb(w) for w in workers),
                    )
                )
            time.sleep(0.1)
        output = proc.stdout.read()
        with open(f"{tmp}/metrics.json") as fh:
            metrics = json.load(fh)
    # Skip the first second: workers are still importing and compiling.
    steady = [s for s in samples if s[0] >= samples[0][0] + 1.0] or samples
    first, last = steady[0], steady[-1]
    total_first, total_last = first[1] + first[2], last[1] + last[2]
    print(
        json.dumps(
            {
                "steps": metrics["steps"],
                "train_seconds": metrics["train_seconds"],
                "samples": len(samples),
                "rss_start_mb": total_first / 1024,
                "rss_end_mb": total_last / 1024,
                "growth_percent": 100 * (total_last - total_first) / total_first,
                "workers_rss_start_mb": first[2] / 1024,
                "workers_rss_end_mb": last[2] / 1024,
            },
            indent=2,
        )
    )
    if proc.returncode != 0:
        print(output[-2000:], file=sys.stderr)
        raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
