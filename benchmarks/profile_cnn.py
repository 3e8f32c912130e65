"""Where a Numba CNN step spends its time: each phase of the W3 step (cnn_mnist, batch
64) timed on its own with the kernel's own compiled pieces, one thread.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.profile_cnn [--batch 64]

Phases per conv layer: im2col, forward GEMM, backward-weights GEMM (cols.T @ dZ),
backward-data GEMM (dZ @ W.T) and col2im; for a layer that runs through Winograd
(:mod:`fastdist.models.kernels.numba_winograd`), the kernel transforms and the Winograd
forward (with bias and ReLU), backward-weights and backward-data instead. Then the
whole step for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.peers.cnn_peers import w3_model
from fastdist.models.kernels.numba_im2col import col2im, im2col
from fastdist.models.kernels.numba_winograd import (
    winograd_backward_data,
    winograd_backward_weights,
    winograd_forward,
    winograd_kernels,
)


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
    offs, (wu, wv, wm, wpad, wtmp, wacc, wpart) = workspace[0], workspace[-1]
    out: dict[str, float] = {}
    a = x.reshape(-1)
    for layer, c in enumerate(model.convs):
        g = np.asarray(c.row(), dtype=np.int64)
        step = int(offs[layer, 2])
        chunks = [(b0, min(b0 + step, batch)) for b0 in range(0, batch, step)]
        per = c.ho * c.wo
        cols = np.empty(step * per * c.patch, np.float32)
        w = model.conv_weight(params, layer).reshape(c.patch, c.cout)
        z = np.empty((batch * per, c.cout), np.float32)
        dz = rng.standard_normal((batch * per, c.cout)).astype(np.float32)
        gw = np.empty_like(w)
        dcols = np.empty(step * per * c.patch, np.float32)
        da = np.empty(batch * c.h * c.w * c.cin, np.float32)

        def cols_of(b0, b1):
            return cols[: (b1 - b0) * per * c.patch].reshape(-1, c.patch)  # noqa: B023

        def run(fn):
            return lambda: [fn(b0, b1) for b0, b1 in chunks]  # noqa: B023

        name = f"conv{layer} (chunks of {step} samples)"
        if not offs[layer, 5]:
            out[f"{name} im2col"] = _ms(run(lambda b0, b1: im2col(a, layer == 0, g, b0, b1, cols)))  # noqa: B023
        if offs[layer, 5]:
            name = f"conv{layer} (Winograd, one sample at a time)"
            bias = model.conv_bias(params, layer)
            zf, dzf = z.reshape(-1), dz.reshape(-1)
            out[f"{name} kernel transforms"] = _ms(
                lambda: [winograd_kernels(w, c.cin, c.cout, back, wu) for back in (False, True)]  # noqa: B023
            )
            winograd_kernels(w, c.cin, c.cout, False, wu)
            out[f"{name} forward (+ bias, ReLU)"] = _ms(
                lambda: winograd_forward(a, g, batch, wu, bias, zf, wv, wm, wtmp)  # noqa: B023
            )
            winograd_kernels(w, c.cin, c.cout, True, wu)
            out[f"{name} backward-data"] = _ms(
                lambda: winograd_backward_data(dzf, g, batch, wu, da, wv, wm, wpad, wtmp)  # noqa: B023
            )
            wbw_args = (a, dzf, g, batch, step, gw, wv, wm, wacc, wpart, wtmp, wpad)
            out[f"{name} backward-weights ({step} samples a chunk)"] = _ms(
                lambda: winograd_backward_weights(*wbw_args)  # noqa: B023
            )
        else:
            out[f"{name} forward GEMM"] = _ms(
                run(lambda b0, b1: np.dot(cols_of(b0, b1), w, z[b0 * per : b1 * per]))  # noqa: B023
            )
            out[f"{name} backward-weights GEMM"] = _ms(
                run(lambda b0, b1: np.dot(cols_of(b0, b1).T, dz[b0 * per : b1 * per], gw))  # noqa: B023
            )
        if layer > 0 and not offs[layer, 5]:
            out[f"{name} backward-data GEMM"] = _ms(
                run(lambda b0, b1: np.dot(dz[b0 * per : b1 * per], w.T, cols_of(b0, b1)))  # noqa: B023
            )
            out[f"{name} col2im"] = _ms(run(lambda b0, b1: col2im(dcols, g, b0, b1, da)))  # noqa: B023
        a = np.maximum(z, 0).reshape(-1)
    grad = np.empty_like(params)
    out["whole step"] = _ms(lambda: kernel.loss_and_grad(params, x, y, grad))
    # im2col runs twice (forward and backward) in an im2col layer, never in a Winograd
    # one.
    listed = "listed phases (im2col counted as often as it runs)"
    out[listed] = sum(out.values()) - out["whole step"]
    out[listed] += sum(
        out[f"conv{layer} (chunks of {int(offs[layer, 2])} samples) im2col"]
        for layer in range(len(model.convs))
        if not offs[layer, 5]
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    for name, ms in profile(args.batch).items():
        print(f"{name:58s} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
