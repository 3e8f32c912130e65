"""Workload W3 (issue 11): the cnn_mnist net, batch 64 per worker. Ratios against the
peers, side by side, come from `python -m benchmarks.w3_ratios`; this suite records the
kernel step per backend on one core, and W3 end to end, for `make bench`."""

from __future__ import annotations

import numpy as np
import pytest

import fastdist
from benchmarks.bench_core import _one_cpu
from benchmarks.peers.cnn_peers import w3_model

W3_BATCH = 64


def _batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((W3_BATCH, 784)).astype(np.float32)
    return x, rng.integers(0, 10, W3_BATCH).astype(np.int32)


@pytest.mark.parametrize("backend", ["numba", "jax"])
def test_step_kernel_w3(benchmark, backend):
    """One forward+backward of the cnn_mnist net on one worker's batch, on one core."""
    if backend == "jax":
        pytest.importorskip("jax")
    benchmark.group = "kernel-W3"
    model = w3_model()
    params, (x, y) = model.init(0), _batch()
    grad = np.empty_like(params)
    with _one_cpu():
        kernel = model.kernel(backend, W3_BATCH)
        benchmark.pedantic(
            kernel.loss_and_grad, args=(params, x, y, grad), warmup_rounds=2, rounds=10
        )
    benchmark.extra_info["samples_per_second"] = W3_BATCH / benchmark.stats["median"]


@pytest.mark.parametrize("workers", [1, 2])
def test_train_w3_grad_avg(benchmark, workers):
    """W3 end to end with grad_avg; samples/s of the training loop in extra_info."""
    benchmark.group = "train-W3"
    cfg = fastdist.compose(["experiment=w3", f"workers={workers}", "steps=20", "diagnostics=false"])
    result = benchmark.pedantic(fastdist.train, args=(cfg,), rounds=1, iterations=1)
    benchmark.extra_info["samples_per_second"] = result.metrics["samples_per_second"]
