"""Where a Numba CNN step spends its time: each phase of the W3 step (cnn_mnist, batch
64) timed on its own with the kernel's own compiled pieces, one thread.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.profile_cnn [--batch 64]

Phases per conv layer: im2col, forward GEMM, backward-weights GEMM (cols.T @ dZ),
backward-data GEMM (dZ @ W.T) and col2im; then the whole step for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.peers.cnn_peers import w3_model
from fastdist.models.kernels.numba_cnn import _col2im, _im2col


def _ms(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def profile(batch: int) -> dict[str, float]:
    model = w3_model()
    params = model.init(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, model.n_inputs)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    out: dict[str, float] = {}
    a = x.reshape(-1)
    for layer, c in enumerate(model.convs):
        g = np.asarray(c.row(), dtype=np.int64)
        rows = batch * c.ho * c.wo
        cols = np.empty(rows * c.patch, np.float32)
        w = model.conv_weight(params, layer).reshape(c.patch, c.cout)
        z = np.empty((rows, c.cout), np.float32)
        dz = rng.standard_normal((rows, c.cout)).astype(np.float32)
        gw = np.empty_like(w)
        dcols = np.empty((rows, c.patch), np.float32)
        da = np.empty(batch * c.h * c.w * c.cin, np.float32)
        c2 = cols.reshape(rows, c.patch)
        out[f"conv{layer} im2col"] = _ms(lambda: _im2col(a, layer == 0, g, batch, cols))  # noqa: B023
        out[f"conv{layer} forward GEMM"] = _ms(lambda: np.dot(c2, w, z))  # noqa: B023
        out[f"conv{layer} backward-weights GEMM"] = _ms(lambda: np.dot(c2.T, dz, gw))  # noqa: B023
        if layer > 0:
            out[f"conv{layer} backward-data GEMM"] = _ms(lambda: np.dot(dz, w.T, dcols))  # noqa: B023
            out[f"conv{layer} col2im"] = _ms(lambda: _col2im(dcols.reshape(-1), g, batch, da))  # noqa: B023
        a = np.maximum(z, 0).reshape(-1)
    kernel = model.kernel("numba", batch)
    grad = np.empty_like(params)
    out["whole step"] = _ms(lambda: kernel.loss_and_grad(params, x, y, grad))
    out["listed phases"] = sum(v for k, v in out.items() if k != "whole step")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    for name, ms in profile(args.batch).items():
        print(f"{name:34s} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
