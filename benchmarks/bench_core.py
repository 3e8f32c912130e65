"""Core speed benchmarks (issue: core engine). Ratios, not absolute times, are the
targets; `python benchmarks/core_ratios.py` prints them side by side.

    make bench            # all suites, saved for `make bench-compare`
"""

from __future__ import annotations

import numpy as np
import pytest

import fastdist
from benchmarks.harness import W1, W2, AllreducePool, batch_for
from fastdist.kernels.numba_mlp import NumbaKernel
from fastdist.kernels.reference import ReferenceKernel
from fastdist.model import init_params


@pytest.mark.parametrize("workload", [W1, W2], ids=["W1", "W2"])
@pytest.mark.parametrize("kernel_cls", [NumbaKernel, ReferenceKernel], ids=["numba", "numpy"])
def test_step_kernel(benchmark, workload, kernel_cls):
    """One forward+backward on one worker's batch, 1 BLAS thread."""
    benchmark.group = f"kernel-{'W1' if workload is W1 else 'W2'}"
    layout, x, y = batch_for(workload)
    params = init_params(layout, 0)
    grad = np.empty_like(params)
    kernel = kernel_cls(layout, workload["batch"])
    benchmark.pedantic(kernel.loss_and_grad, args=(params, x, y, grad), warmup_rounds=2, rounds=20)
    benchmark.extra_info["samples_per_second"] = workload["batch"] / benchmark.stats["median"]


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


@pytest.mark.parametrize("workers", [1, 2])
def test_train_w1_grad_avg(benchmark, workers):
    """W1 end to end with grad_avg; samples/s over the training loop (after spawn and
    compilation) is in extra_info."""
    benchmark.group = "train-W1"
    cfg = fastdist.compose(["+experiment=w1", f"workers={workers}", "steps=40"])
    result = benchmark.pedantic(fastdist.train, args=(cfg,), rounds=1, iterations=1)
    benchmark.extra_info["samples_per_second"] = result.metrics["samples_per_second"]
    benchmark.extra_info["startup_seconds"] = result.metrics["startup_seconds"]
