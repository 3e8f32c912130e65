"""The Numba CNN's training step: forward pass, loss, and backward pass in one compiled
call. Dense layers back to the conv features (:mod:`numba_dense`), then per conv layer:
max-pool's argmax routing, the ReLU mask and the bias gradient (one sweep,
:func:`~fastdist.models.kernels.numba_maxpool.max_pool_backward`, where the layer pools),
and per chunk of samples im2col again, backward-weights (``dW += cols.T @ dZ``) and
backward-data (``dcols = dZ @ W.T`` then col2im; skipped for the first layer). Layers
that run through Winograd (:mod:`numba_winograd`) do backward-weights and backward-data
with it instead, in one sweep over the batch, no im2col; a direct first layer
(:mod:`numba_direct`) does backward-weights, with the mask and bias, in one sweep."""

from __future__ import annotations

import numpy as np
from numba import njit

from fastdist.models.kernels.numba_cnn_forward import cnn_forward
from fastdist.models.kernels.numba_cnn_workspace import DIRECT, IM2COL, WINOGRAD
from fastdist.models.kernels.numba_dense import dense_backward
from fastdist.models.kernels.numba_direct import direct_backward_weights
from fastdist.models.kernels.numba_im2col import col2im, im2col
from fastdist.models.kernels.numba_loss import softmax_cross_entropy
from fastdist.models.kernels.numba_maxpool import max_pool_backward
from fastdist.models.kernels.numba_winograd import winograd_backward, winograd_kernels

__all__ = ["cnn_loss_and_grad"]


@njit(cache=True, nogil=True)
def cnn_loss_and_grad(
    params,
    geom,
    dense,
    offs,
    dense_offs,
    x,
    y,
    grad,
    cols,
    zbuf,
    pbuf,
    argbuf,
    acts,
    dcols,
    gw_part,
    delta_a,
    delta_b,
    wino,
):
    """Forward, softmax cross-entropy, then the gradient of the mean loss into ``grad``;
    return (mean loss, #correct). The arguments after ``grad`` are the workspaces of
    :func:`~fastdist.models.kernels.numba_cnn_workspace.workspace`."""
    batch = x.shape[0]
    n_conv = geom.shape[0]
    logits = cnn_forward(
        params, geom, dense, offs, dense_offs, x, batch, cols, zbuf, pbuf, argbuf, acts, wino
    )
    loss, correct = softmax_cross_entropy(logits, y, delta_a)

    # The dense layers, down to d(loss)/d(flattened conv features) (the forward's input
    # to the first dense layer: the last conv's pooled or ReLU output).
    last = offs[n_conv - 1]
    if geom[n_conv - 1, 12] * geom[n_conv - 1, 13] > 1:
        features = pbuf[last[4] : last[4] + batch * dense[0]]
    else:
        features = zbuf[last[3] : last[3] + batch * dense[0]]
    h0 = features.reshape((batch, dense[0]))
    in_a = dense_backward(params, dense, dense_offs, h0, acts, grad, delta_a, delta_b, True)

    # Conv layers, last first. ``dp`` is d(loss)/d(pooled output), flat NHWC.
    for layer in range(n_conv - 1, -1, -1):
        g = geom[layer]
        cin, cout, kh, kw = g[0], g[3], g[4], g[5]
        ho, wo, qh, qw, hp, wp = g[10], g[11], g[12], g[13], g[14], g[15]
        patch = kh * kw * cin
        rows = batch * ho * wo
        dp = (delta_a if in_a else delta_b)[: batch * hp * wp * cout]
        z = zbuf[offs[layer, 3] : offs[layer, 3] + rows * cout]
        method = offs[layer, 5]
        gb = grad[offs[layer, 1] : offs[layer, 1] + cout]
        if qh * qw > 1:  # routed to the argmaxes, masked and the bias summed in one sweep
            dz = (delta_b if in_a else delta_a)[: rows * cout]
            dz_in_a = not in_a
            arg = argbuf[offs[layer, 4] : offs[layer, 4] + batch * hp * wp * cout]
            max_pool_backward(dp, arg, z, g, batch, dz, gb)
        else:
            dz = dp
            dz_in_a = in_a
            if method != DIRECT:  # the direct kernel masks and sums as it goes
                for t in range(rows * cout):  # branch-free: the mask is random
                    dz[t] = dz[t] if z[t] > 0.0 else np.float32(0.0)
                dz2 = dz.reshape((rows, cout))
                for c in range(cout):
                    gb[c] = 0.0
                for r in range(rows):
                    for c in range(cout):
                        gb[c] += dz2[r, c]
        dz2 = dz.reshape((rows, cout))
        # Per chunk of samples, all in cache: im2col again (cheaper than keeping the
        # whole batch's columns in memory), backward-weights accumulated, backward-data
        # and col2im.
        gw = grad[offs[layer, 0] : offs[layer, 0] + patch * cout].reshape((patch, cout))
        part = gw_part[: patch * cout].reshape((patch, cout))
        wmat = params[offs[layer, 0] : offs[layer, 0] + patch * cout].reshape((patch, cout))
        a = x.reshape(x.size)
        if layer > 0:
            prev = geom[layer - 1]
            if prev[12] * prev[13] > 1:
                a = pbuf[offs[layer - 1, 4] : offs[layer - 1, 4] + batch * g[0] * g[1] * g[2]]
            else:
                a = zbuf[offs[layer - 1, 3] : offs[layer - 1, 3] + batch * g[0] * g[1] * g[2]]
        da = (delta_b if dz_in_a else delta_a)[: batch * g[1] * g[2] * cin]
        step = offs[layer, 2]
        if method == WINOGRAD:  # both passes, in chunks of ``step`` samples
            if layer > 0:
                winograd_kernels(wmat, cin, cout, True, wino[0])
            winograd_backward(a, dz, g, batch, step, gw, wino[0], da, layer > 0, wino[1],
                              wino[2], wino[5], wino[6], wino[4], wino[3])  # fmt: skip
        elif method == DIRECT:  # mask again (a no-op after pooling) and the bias with it
            direct_backward_weights(a, z, dz, g, batch, gw, gb, gw_part)
        for b0 in range(0, batch if method == IM2COL else 0, step):
            b1 = min(b0 + step, batch)
            n = (b1 - b0) * ho * wo
            c2 = cols[: n * patch].reshape((n, patch))
            im2col(a, layer == 0, g, b0, b1, cols)
            dzc = dz2[b0 * ho * wo : b1 * ho * wo]
            if b0 == 0:
                np.dot(c2.T, dzc, gw)
            else:
                np.dot(c2.T, dzc, part)
                gw += part
            if layer > 0:
                dc = dcols[: n * patch]
                np.dot(dzc, wmat.T, dc.reshape((n, patch)))
                col2im(dc, g, b0, b1, da)
        if layer > 0:
            in_a = not dz_in_a
    return loss, correct
