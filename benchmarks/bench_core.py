"""Core speed benchmarks (issue: core engine). Ratios, not absolute times, are the
targets; `python benchmarks/core_ratios.py` prints them side by side.

    make bench            # all suites, saved for `make bench-compare`
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

import fastdist
from benchmarks.harness import W1, W2, AllreducePool, batch_for
from fastdist.models.kernels.numba_mlp import NumbaKernel
from fastdist.models.kernels.reference_kernel import ReferenceKernel


def _jax_kernel(layout, batch):
    pytest.importorskip("jax")
    from fastdist.models.kernels.jax_mlp import JaxKernel

    return JaxKernel(layout, batch)


@contextlib.contextmanager
def _one_cpu():
    """XLA ignores its thread flags and sizes its pool from the CPU affinity, so a
    one-core comparison must restrict the affinity (BLAS is pinned by the env)."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(saved)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


@pytest.mark.parametrize("workload", [W1, W2], ids=["W1", "W2"])
@pytest.mark.parametrize(
    "make_kernel", [NumbaKernel, _jax_kernel, ReferenceKernel], ids=["numba", "jax", "numpy"]
)
def test_step_kernel(benchmark, workload, make_kernel):
    """One forward+backward on one worker's batch, on one core."""
    benchmark.group = f"kernel-{'W1' if workload is W1 else 'W2'}"
    layout, x, y = batch_for(workload)
    params = layout.init(0)
    grad = np.empty_like(params)
    with _one_cpu():
        kernel = make_kernel(layout, workload["batch"])
        benchmark.pedantic(
            kernel.loss_and_grad, args=(params, x, y, grad), warmup_rounds=2, rounds=20
        )
    benchmark.extra_info["samples_per_second"] = workload["batch"] / benchmark.stats["median"]


def test_train_step_w1_two_workers(benchmark):
    """One synchronous grad_avg step of W1 on 2 workers, from the per-step time of a
    steady run (train_seconds / steps)."""
    benchmark.group = "step-W1"
    cfg = fastdist.compose(["experiment=w1", "workers=2", "steps=60", "diagnostics=false"])
    result = benchmark.pedantic(fastdist.train, args=(cfg,), rounds=1, iterations=1)
    benchmark.extra_info["seconds_per_step"] = result.metrics["train_seconds"] / 60


@pytest.mark.parametrize("n_floats", [1_000_000, 10_000_000], ids=["1M", "10M"])
def test_allreduce_shared_memory(benchmark, n_floats):
    """Average across 2 workers in shared memory, one collective per round."""
    benchmark.group = f"allreduce-{n_floats // 1_000_000}M"
    with AllreducePool(n_floats, workers=2) as pool:
        benchmark.pedantic(pool.run, warmup_rounds=2, rounds=30)
        np.testing.assert_allclose(pool.result(), 1.5)  # mean of rows of 1.0 and 2.0


@pytest.mark.parametrize("n_floats", [1_000_000, 10_000_000], ids=["1M", "10M"])
def test_allreduce_baseline_np_add(benchmark, n_floats):
    """The yardstick: one np.add over arrays of the same size, in one process."""
    benchmark.group = f"allreduce-{n_floats // 1_000_000}M"
    a = np.ones(n_floats, np.float32)
    b = np.ones(n_floats, np.float32)
    out = np.empty_like(a)
    benchmark.pedantic(np.add, args=(a, b, out), warmup_rounds=2, rounds=30)


@pytest.mark.parametrize("backend", ["numba", "jax"])
@pytest.mark.parametrize("workers", [1, 2])
def test_train_w1_grad_avg(benchmark, workers, backend):
    """W1 end to end with grad_avg; samples/s over the training loop (after spawn and
    compilation) is in extra_info."""
    if backend == "jax":
        pytest.importorskip("jax")
    benchmark.group = "train-W1"
    cfg = fastdist.compose(
        [
            "experiment=w1",
            f"workers={workers}",
            "steps=40",
            f"backend={backend}",
            "diagnostics=false",
        ]
    )
    result = benchmark.pedantic(fastdist.train, args=(cfg,), rounds=1, iterations=1)
    benchmark.extra_info["samples_per_second"] = result.metrics["samples_per_second"]
    benchmark.extra_info["startup_seconds"] = result.metrics["startup_seconds"]
