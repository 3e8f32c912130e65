"""Where a Numba CNN step spends its time: each phase of the W3 step (cnn_mnist, batch
64) timed on its own with the kernel's own compiled pieces, one thread.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.profile_cnn [--batch 64]

Phases per conv layer, by how it convolves
(:mod:`~fastdist.models.kernels.numba_cnn_workspace`): im2col, forward GEMM,
backward-weights GEMM (cols.T @ dZ), backward-data GEMM (dZ @ W.T) and col2im; for a
direct layer (:mod:`~fastdist.models.kernels.numba_direct`) its forward (with bias and
ReLU) and backward-weights (with the mask and the bias gradient); for a Winograd layer
(:mod:`~fastdist.models.kernels.numba_winograd`) the kernel transforms, the forward (with
bias and ReLU) and the backward pass (weights and data in one sweep). Then max-pool and
its backward pass (routing, mask and bias gradient in one sweep) where the layer pools,
and the whole step for comparison: what the listed phases leave is the loss and the
dense layers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.peers.cnn_peers import w3_model
from fastdist.models.kernels.numba_cnn_workspace import DIRECT, IM2COL, WINOGRAD
from fastdist.models.kernels.numba_direct import direct_backward_weights, direct_forward
from fastdist.models.kernels.numba_im2col import col2im, im2col
from fastdist.models.kernels.numba_maxpool import max_pool, max_pool_backward
from fastdist.models.kernels.numba_winograd import (
    winograd_backward,
    winograd_forward,
    winograd_kernels,
)

METHOD_NAMES = {IM2COL: "im2col + GEMM", WINOGRAD: "Winograd", DIRECT: "direct"}


def _ms(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def profile(batch: int) -> dict[str, float]:
    """Milliseconds per phase, each phase over the whole batch in the kernel's chunks."""
    model = w3_model()
    params = model.init(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, model.n_inputs)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    kernel = model.kernel("numba", batch)
    workspace = kernel._workspace(batch)
    offs, part, (wu, wv, wm, wrows, wtmp, wacc, wpart) = workspace[0], workspace[8], workspace[-1]
    out: dict[str, float] = {}
    im2col_ms = 0.0  # im2col runs twice in an im2col layer (forward and backward)
    a = x.reshape(-1)
    for layer, c in enumerate(model.convs):
        g = np.asarray(c.row(), dtype=np.int64)
        step, method = int(offs[layer, 2]), int(offs[layer, 5])
        per = c.ho * c.wo
        w = model.conv_weight(params, layer).reshape(c.patch, c.cout)
        bias = model.conv_bias(params, layer)
        z = np.empty((batch * per, c.cout), np.float32)
        zf = z.reshape(-1)
        dz = rng.standard_normal((batch * per, c.cout)).astype(np.float32)
        dzf = dz.reshape(-1)
        gw, gb = np.empty_like(w), np.empty_like(bias)
        da = np.empty(batch * c.h * c.w * c.cin, np.float32)
        name = f"conv{layer} ({METHOD_NAMES[method]})"
        if method == WINOGRAD:
            out[f"{name} kernel transforms"] = _ms(
                lambda: [winograd_kernels(w, c.cin, c.cout, back, wu) for back in (False, True)]  # noqa: B023
            )
            winograd_kernels(w, c.cin, c.cout, False, wu)
            out[f"{name} forward (+ bias, ReLU)"] = _ms(
                lambda: winograd_forward(a, g, batch, wu, bias, zf, wv, wm, wtmp)  # noqa: B023
            )
            winograd_kernels(w, c.cin, c.cout, True, wu)
            backward_args = (a, dzf, g, batch, step, gw, wu, da, layer > 0, wv, wm, wacc, wpart,
                             wtmp, wrows)  # fmt: skip
            out[f"{name} backward, weights and data ({step} samples a chunk)"] = _ms(
                lambda: winograd_backward(*backward_args)  # noqa: B023
            )
        elif method == DIRECT:
            out[f"{name} forward (+ bias, ReLU)"] = _ms(
                lambda: direct_forward(a, g, batch, w, bias, zf)  # noqa: B023
            )
            # The mask works in place: a fresh copy of the gradient each time.
            out[f"{name} backward-weights (+ mask, bias)"] = _ms(
                lambda: direct_backward_weights(a, zf, dzf.copy(), g, batch, gw, gb, part)  # noqa: B023
            )
        else:
            chunks = [(b0, min(b0 + step, batch)) for b0 in range(0, batch, step)]
            cols = np.empty(step * per * c.patch, np.float32)
            dcols = np.empty_like(cols)

            def cols_of(b0, b1):
                return cols[: (b1 - b0) * per * c.patch].reshape(-1, c.patch)  # noqa: B023

            def run(fn):
                return lambda: [fn(b0, b1) for b0, b1 in chunks]  # noqa: B023

            name = f"{name[:-1]}, chunks of {step} samples)"
            im2col_ms += 2 * _ms(run(lambda b0, b1: im2col(a, layer == 0, g, b0, b1, cols)))  # noqa: B023
            out[f"{name} im2col (x2: forward and backward)"] = im2col_ms
            out[f"{name} forward GEMM"] = _ms(
                run(lambda b0, b1: np.dot(cols_of(b0, b1), w, z[b0 * per : b1 * per]))  # noqa: B023
            )
            out[f"{name} backward-weights GEMM"] = _ms(
                run(lambda b0, b1: np.dot(cols_of(b0, b1).T, dz[b0 * per : b1 * per], gw))  # noqa: B023
            )
            if layer > 0:
                out[f"{name} backward-data GEMM"] = _ms(
                    run(lambda b0, b1: np.dot(dz[b0 * per : b1 * per], w.T, cols_of(b0, b1)))  # noqa: B023
                )
                out[f"{name} col2im"] = _ms(run(lambda b0, b1: col2im(dcols, g, b0, b1, da)))  # noqa: B023
            np.maximum(z, 0, out=z)
        a = zf
        if c.qh * c.qw > 1:
            pooled = np.empty(batch * c.hp * c.wp * c.cout, np.float32)
            arg = np.empty(pooled.size, np.int64)
            dp = rng.standard_normal(pooled.size).astype(np.float32)
            out[f"conv{layer} max-pool"] = _ms(
                lambda: max_pool(zf, g, batch, pooled, arg)  # noqa: B023
            )
            out[f"conv{layer} max-pool backward (+ mask, bias)"] = _ms(
                lambda: max_pool_backward(dp, arg, zf, g, batch, dzf, gb)  # noqa: B023
            )
            a = pooled
    grad = np.empty_like(params)
    listed = sum(out.values())
    out["whole step"] = _ms(lambda: kernel.loss_and_grad(params, x, y, grad))
    out["listed phases"] = listed
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    for name, ms in profile(args.batch).items():
        print(f"{name:64s} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
