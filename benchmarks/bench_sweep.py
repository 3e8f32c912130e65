"""Sweep overhead (issue 17): a multirun of small jobs, cold (every job spawns its
workers) and warm (pool.reuse: one set of workers for the whole sweep). Per-job
overheads and the side-by-side comparison with another commit come from

    python -m benchmarks.sweep_overhead --jobs 20 --rounds 3 --base /path/to/other/checkout

This suite keeps the sweep short (5 jobs) so `make bench` stays quick.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from benchmarks.child_env import ROOT
from benchmarks.sweep_overhead import JOB, time_sweep

_SEEDS = "seed=0,1,2,3,4"


@pytest.mark.parametrize("reuse", ["false", "true"], ids=["cold", "warm"])
def test_sweep_of_five_small_jobs(benchmark, reuse):
    with tempfile.TemporaryDirectory(prefix="fastdist-bench-") as tmp:
        result = benchmark.pedantic(
            time_sweep,
            args=(ROOT, [*JOB, _SEEDS, f"pool.reuse={reuse}"], Path(tmp)),
            rounds=1,
            iterations=1,
        )
    benchmark.extra_info.update(result)
    assert result["jobs"] == 5
