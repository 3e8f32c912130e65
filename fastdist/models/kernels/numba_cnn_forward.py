"""The Numba CNN's forward pass: the whole network (conv layers as chunked im2col + GEMM,
or Winograd (:mod:`numba_winograd`) or direct (:mod:`numba_direct`) where they apply,
ReLU, max-pool, then the dense layers of :mod:`numba_dense`) in one compiled call, into
workspaces laid out by :mod:`~fastdist.models.kernels.numba_cnn_workspace`."""

from __future__ import annotations

import numpy as np
from numba import njit

from fastdist.models.kernels.numba_cnn_workspace import DIRECT, WINOGRAD
from fastdist.models.kernels.numba_dense import dense_forward
from fastdist.models.kernels.numba_direct import direct_forward
from fastdist.models.kernels.numba_im2col import im2col
from fastdist.models.kernels.numba_maxpool import max_pool
from fastdist.models.kernels.numba_winograd import winograd_forward, winograd_kernels

__all__ = ["cnn_forward"]


@njit(cache=True, nogil=True)
def cnn_forward(
    params, geom, dense, offs, dense_offs, x, batch, cols, zbuf, pbuf, argbuf, acts, wino
):
    """Fill the workspaces; return the logits (batch, classes) view of ``acts``.

    ``offs[layer]`` = (weight offset, bias offset, samples per chunk, z offset, pooled
    offset, how it convolves) of a conv layer; ``dense_offs`` is the dense layers' table
    (:mod:`~fastdist.models.kernels.numba_dense`); ``wino`` the Winograd buffers.
    """
    n_conv = geom.shape[0]
    a = x.reshape(x.size)
    for layer in range(n_conv):
        g = geom[layer]
        cout, kh, kw, cin = g[3], g[4], g[5], g[0]
        ho, wo, qh, qw, hp, wp = g[10], g[11], g[12], g[13], g[14], g[15]
        patch = kh * kw * cin
        rows = batch * ho * wo
        wmat = params[offs[layer, 0] : offs[layer, 0] + patch * cout].reshape((patch, cout))
        bias = params[offs[layer, 1] : offs[layer, 1] + cout]
        z = zbuf[offs[layer, 3] : offs[layer, 3] + rows * cout]
        z2 = z.reshape((rows, cout))
        if offs[layer, 5] == WINOGRAD:  # bias and ReLU included
            winograd_kernels(wmat, cin, cout, False, wino[0])
            winograd_forward(a, g, batch, wino[0], bias, z, wino[1], wino[2], wino[4])
        elif offs[layer, 5] == DIRECT:  # bias and ReLU included
            direct_forward(a, g, batch, wmat, bias, z)
        else:
            step = offs[layer, 2]  # samples per chunk: the chunk's im2col stays in cache
            for b0 in range(0, batch, step):
                b1 = min(b0 + step, batch)
                n = (b1 - b0) * ho * wo
                c2 = cols[: n * patch].reshape((n, patch))
                im2col(a, layer == 0, g, b0, b1, cols)
                np.dot(c2, wmat, z2[b0 * ho * wo : b1 * ho * wo])
            for r in range(rows):
                for c in range(cout):
                    v = z2[r, c] + bias[c]
                    z2[r, c] = v if v > 0.0 else np.float32(0.0)
        if qh * qw > 1:
            p = pbuf[offs[layer, 4] : offs[layer, 4] + batch * hp * wp * cout]
            arg = argbuf[offs[layer, 4] : offs[layer, 4] + batch * hp * wp * cout]
            max_pool(z, g, batch, p, arg)
            a = p
        else:
            a = z
    features = a[: batch * dense[0]].reshape((batch, dense[0]))
    return dense_forward(params, dense, dense_offs, features, acts)
