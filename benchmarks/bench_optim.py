"""Optimizer update benchmarks (issue 12): the fused updates on W1's 1,863,690
parameters, next to a copy of one parameter-sized vector (the memory yardstick).
Ratios side by side: ``python -m benchmarks.optim_ratios``."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.harness import W1
from fastdist.models.mlp import MLP
from fastdist.optim import adamw, lion, sgd

N = MLP(W1["sizes"]).layout.size


def _buffers(opt):
    rng = np.random.default_rng(0)
    params = rng.standard_normal(N).astype(np.float32)
    grads = (rng.standard_normal((2, N)) * 1e-3).astype(np.float32)
    return params, [np.zeros(N, np.float32) for _ in opt.state_names], grads


OPTIMIZERS = {"sgd_momentum": sgd(lr=1e-3), "adamw": adamw(lr=1e-6), "lion": lion(lr=1e-7)}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_update_own_gradient(benchmark, name):
    benchmark.group = "optim-update-W1"
    opt = OPTIMIZERS[name]
    params, state, grads = _buffers(opt)
    benchmark.pedantic(
        opt.update, args=(params, state, grads[0], 0, N, 10), warmup_rounds=3, rounds=50
    )


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_update_from_mean_of_two_rows(benchmark, name):
    benchmark.group = "optim-from-mean-W1"
    opt = OPTIMIZERS[name]
    params, state, grads = _buffers(opt)
    benchmark.pedantic(
        opt.update_from_mean, args=(params, state, grads, 0, N, 10), warmup_rounds=3, rounds=50
    )


def test_copy_one_vector(benchmark):
    benchmark.group = "optim-update-W1"
    src, dst = np.ones(N, np.float32), np.empty(N, np.float32)
    benchmark.pedantic(np.copyto, args=(dst, src), warmup_rounds=3, rounds=50)
