"""The core engine's speed targets, measured side by side (A B A B) in one run.

    .venv/bin/python -m benchmarks.core_ratios [--json PATH]

Targets: Numba step >= 0.9x a NumPy (1-thread BLAS) step on W1; 2 workers >= 1.8x one
worker on W1 with grad_avg; shared-memory allreduce of 10M floats across 2 workers
within 2x one np.add over the same array.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks.child_env import pin_this_process

pin_this_process()  # before NumPy loads its BLAS

import numpy as np  # noqa: E402

import fastdist  # noqa: E402
from benchmarks.harness import W1, AllreducePool, batch_for, median_seconds, report  # noqa: E402
from fastdist.models.kernels.numba_mlp import NumbaKernel  # noqa: E402
from fastdist.models.kernels.reference_kernel import ReferenceKernel  # noqa: E402


def interleaved(a, b, rounds: int, repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b`` over alternating rounds (after a warm-up)."""
    a(), b()
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(median_seconds(a, repeats))
        tb.append(median_seconds(b, repeats))
    return statistics.median(ta), statistics.median(tb)


def kernel_ratio() -> dict:
    layout, x, y = batch_for(W1)
    params = layout.init(0)
    grad = np.empty_like(params)
    numba_k, numpy_k = NumbaKernel(layout, W1["batch"]), ReferenceKernel(layout, W1["batch"])
    t_numba, t_numpy = interleaved(
        lambda: numba_k.loss_and_grad(params, x, y, grad),
        lambda: numpy_k.loss_and_grad(params, x, y, grad),
        rounds=5,
        repeats=5,
    )
    return {
        "numba_step_ms": t_numba * 1e3,
        "numpy_step_ms": t_numpy * 1e3,
        "numba_speed_vs_numpy": t_numpy / t_numba,
        "target": ">= 0.9",
    }


def scaling_ratio(steps: int = 60, rounds: int = 2) -> dict:
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for workers in (1, 2):
            cfg = fastdist.compose(["experiment=w1", f"workers={workers}", f"steps={steps}"])
            rates[workers].append(fastdist.train(cfg).metrics["samples_per_second"])
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    return {
        "w1_samples_per_s_1_worker": one,
        "w1_samples_per_s_2_workers": two,
        "speedup_2_vs_1": two / one,
        "target": ">= 1.8",
    }


def allreduce_ratio(n_floats: int = 10_000_000) -> dict:
    a = np.ones(n_floats, np.float32)
    b = np.ones(n_floats, np.float32)
    out = np.empty_like(a)
    with AllreducePool(n_floats, workers=2) as pool:
        t_ar, t_add = interleaved(pool.run, lambda: np.add(a, b, out=out), rounds=5, repeats=10)
    return {
        "allreduce_ms": t_ar * 1e3,
        "np_add_ms": t_add * 1e3,
        "allreduce_time_vs_np_add": t_ar / t_add,
        "target": "<= 2.0",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = {
        "kernel_W1": kernel_ratio(),
        "allreduce_10M": allreduce_ratio(),
        "scaling_W1": scaling_ratio(),
    }
    report(results, args.json)


if __name__ == "__main__":
    main()
