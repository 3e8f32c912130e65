"""Numba CNN forward/backward: one compiled call per step, into buffers allocated once.

Convolutions are im2col + BLAS GEMM, channels-last: the rows of ``cols`` are ``(kh, kw,
cin)`` patches, so ``cols @ W`` (W: ``(patch, cout)``, the layout's HWIO weights) is the
layer's output in NHWC, and the next layer's im2col copies runs of ``cin`` contiguous
floats. The batch is walked in chunks of samples whose columns fit in L2 (about 512
KiB): a whole batch's columns (42 MB for W3's second conv) would go to DRAM and back.
Backward, per chunk: im2col again, ``dW += cols.T @ dZ`` (backward-weights), ``dcols =
dZ @ W.T`` then col2im (backward-data; skipped for the first layer). Max-pool keeps
each window's argmax for its backward. The dense layers
and the softmax cross-entropy are as in :mod:`numba_mlp`.

Every layer's geometry is a row of the int64 array ``geom`` (columns ``_GEOM``), and
every buffer offset is precomputed for ``max_batch`` rows, so the whole network is
walked inside one compiled function.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastdist.models.kernels.numba_loss import softmax_cross_entropy

__all__ = ["NumbaCNNKernel"]

# im2col columns per chunk of samples (floats): 128K floats = 512 KiB, within L2.
_CHUNK_FLOATS = 1 << 17

# Columns of a geometry row (ConvLayer.row()).
_GEOM = (
    "cin",
    "h",
    "w",
    "cout",
    "kh",
    "kw",
    "sh",
    "sw",
    "ph",
    "pw",
    "ho",
    "wo",
    "qh",
    "qw",
    "hp",
    "wp",
)


@njit(cache=True, nogil=True)
def _im2col(a, first, g, b0, b1, cols):
    """``cols[(b - b0, oh, ow), (i, j, c)]`` = input pixel, or 0 in the padding, for the
    samples ``b0 <= b < b1``. ``a`` is flat: NCHW rows for the first layer (arena rows),
    NHWC afterwards (runs of ``cin`` contiguous floats)."""
    cin, h, w = g[0], g[1], g[2]
    kh, kw, sh, sw, ph, pw, ho, wo = g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11]
    if first:
        sb, sc, sy, sx = cin * h * w, h * w, w, 1
    else:
        sb, sc, sy, sx = h * w * cin, 1, w * cin, cin
    patch = kh * kw * cin
    for b in range(b0, b1):
        for oh in range(ho):
            for ow in range(wo):
                r = (((b - b0) * ho + oh) * wo + ow) * patch
                k = 0
                for i in range(kh):
                    y = oh * sh - ph + i
                    for j in range(kw):
                        xx = ow * sw - pw + j
                        if 0 <= y < h and 0 <= xx < w:
                            base = b * sb + y * sy + xx * sx
                            if sc == 1:
                                # Element loops over views, not a slice assignment:
                                # Numba's may copy the source first (overlap check).
                                cv = cols[r + k : r + k + cin]
                                av = a[base : base + cin]
                                for c in range(cin):
                                    cv[c] = av[c]
                            else:
                                for c in range(cin):
                                    cols[r + k + c] = a[base + c * sc]
                        else:
                            cols[r + k : r + k + cin] = 0.0
                        k += cin


@njit(cache=True, nogil=True)
def _col2im(dcols, g, b0, b1, da):
    """Adjoint of :func:`_im2col` (NHWC) into ``da`` for samples ``b0 <= b < b1``
    (their part of ``da`` is zeroed here)."""
    cin, h, w = g[0], g[1], g[2]
    kh, kw, sh, sw, ph, pw, ho, wo = g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11]
    patch = kh * kw * cin
    da[b0 * h * w * cin : b1 * h * w * cin] = 0.0
    for b in range(b0, b1):
        for oh in range(ho):
            for ow in range(wo):
                r = (((b - b0) * ho + oh) * wo + ow) * patch
                k = 0
                for i in range(kh):
                    y = oh * sh - ph + i
                    for j in range(kw):
                        xx = ow * sw - pw + j
                        if 0 <= y < h and 0 <= xx < w:
                            base = ((b * h + y) * w + xx) * cin
                            dv = da[base : base + cin]
                            sv = dcols[r + k : r + k + cin]
                            for c in range(cin):
                                dv[c] += sv[c]
                        k += cin


@njit(cache=True, nogil=True)
def _max_pool(z, g, batch, p, arg):
    """Non-overlapping max-pool of NHWC ``z`` into ``p``, keeping each output's argmax
    (flat index into ``z``) in ``arg``. Channels innermost: every window position is a
    contiguous run of ``cout`` values, compared without branches (vectorised)."""
    cout, ho, wo, qh, qw, hp, wp = g[3], g[10], g[11], g[12], g[13], g[14], g[15]
    for b in range(batch):
        for oy in range(hp):
            for ox in range(wp):
                out = ((b * hp + oy) * wp + ox) * cout
                first = ((b * ho + oy * qh) * wo + ox * qw) * cout
                pv = p[out : out + cout]
                av = arg[out : out + cout]
                for c in range(cout):
                    pv[c] = z[first + c]
                    av[c] = first + c
                for i in range(qh):
                    for j in range(qw):
                        at = ((b * ho + oy * qh + i) * wo + ox * qw + j) * cout
                        zv = z[at : at + cout]
                        for c in range(cout):
                            # Selects, not branches: LLVM vectorises this (a branchy
                            # version ran 25x slower on random data).
                            v = zv[c]
                            old = pv[c]
                            take = v > old
                            pv[c] = v if take else old
                            av[c] = at + c if take else av[c]


@njit(cache=True, nogil=True)
def _forward(params, geom, dense, offs, x, batch, cols, zbuf, pbuf, argbuf, acts):
    """Fill the workspaces; return the logits (batch, classes) view of ``acts``.

    ``offs[layer]`` = (weight offset, bias offset, samples per chunk, z offset, pooled
    offset) of a conv layer; dense layer j's (weight, bias) offsets are
    ``offs[n_conv + j, :2]``, its output at ``offs[n_conv + j, 3]``.
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
        step = offs[layer, 2]  # samples per chunk: the chunk's im2col stays in cache
        for b0 in range(0, batch, step):
            b1 = min(b0 + step, batch)
            n = (b1 - b0) * ho * wo
            c2 = cols[: n * patch].reshape((n, patch))
            _im2col(a, layer == 0, g, b0, b1, cols)
            np.dot(c2, wmat, z2[b0 * ho * wo : b1 * ho * wo])
        for r in range(rows):
            for c in range(cout):
                v = z2[r, c] + bias[c]
                z2[r, c] = v if v > 0.0 else 0.0
        if qh * qw > 1:
            p = pbuf[offs[layer, 4] : offs[layer, 4] + batch * hp * wp * cout]
            arg = argbuf[offs[layer, 4] : offs[layer, 4] + batch * hp * wp * cout]
            _max_pool(z, g, batch, p, arg)
            a = p
        else:
            a = z
    n_dense = dense.shape[0] - 1
    h = a[: batch * dense[0]].reshape((batch, dense[0]))
    for j in range(n_dense):
        fan_in, fan_out = dense[j], dense[j + 1]
        o = offs[n_conv + j]
        wmat = params[o[0] : o[0] + fan_in * fan_out].reshape((fan_in, fan_out))
        bias = params[o[1] : o[1] + fan_out]
        zz = acts[o[3] : o[3] + batch * fan_out].reshape((batch, fan_out))
        np.dot(h, wmat, zz)
        relu = j < n_dense - 1
        for i in range(batch):
            for k in range(fan_out):
                v = zz[i, k] + bias[k]
                if relu and v < 0.0:
                    v = 0.0
                zz[i, k] = v
        h = zz
    return h


@njit(cache=True, nogil=True)
def _loss_and_grad(
    params,
    geom,
    dense,
    offs,
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
):
    batch = x.shape[0]
    n_conv = geom.shape[0]
    n_dense = dense.shape[0] - 1
    logits = _forward(params, geom, dense, offs, x, batch, cols, zbuf, pbuf, argbuf, acts)
    n_classes = dense[n_dense]

    # Softmax cross-entropy; delta = (softmax - onehot) / batch.
    delta = delta_a[: batch * n_classes].reshape((batch, n_classes))
    loss, correct = softmax_cross_entropy(logits, y, delta)

    # Dense layers, last first; the delta ends as d(loss)/d(flattened conv features).
    in_a = True  # which of delta_a / delta_b holds ``delta``
    last = geom[n_conv - 1]
    for j in range(n_dense - 1, -1, -1):
        fan_in, fan_out = dense[j], dense[j + 1]
        o = offs[n_conv + j]
        if j == 0:
            if last[12] * last[13] > 1:
                h_in = pbuf[offs[n_conv - 1, 4] : offs[n_conv - 1, 4] + batch * fan_in]
            else:
                h_in = zbuf[offs[n_conv - 1, 3] : offs[n_conv - 1, 3] + batch * fan_in]
        else:
            po = offs[n_conv + j - 1, 3]
            h_in = acts[po : po + batch * fan_in]
        h2 = h_in.reshape((batch, fan_in))
        gw = grad[o[0] : o[0] + fan_in * fan_out].reshape((fan_in, fan_out))
        gb = grad[o[1] : o[1] + fan_out]
        np.dot(h2.T, delta, gw)
        for k in range(fan_out):
            gb[k] = 0.0
        for i in range(batch):
            for k in range(fan_out):
                gb[k] += delta[i, k]
        wmat = params[o[0] : o[0] + fan_in * fan_out].reshape((fan_in, fan_out))
        buf = delta_b if in_a else delta_a
        in_a = not in_a
        prev = buf[: batch * fan_in].reshape((batch, fan_in))
        np.dot(delta, wmat.T, prev)
        if j > 0:
            for i in range(batch):
                for k in range(fan_in):
                    prev[i, k] = prev[i, k] if h2[i, k] > 0.0 else 0.0
        delta = prev

    # Conv layers, last first. ``dp`` is d(loss)/d(pooled output), flat NHWC.
    for layer in range(n_conv - 1, -1, -1):
        g = geom[layer]
        cin, cout, kh, kw = g[0], g[3], g[4], g[5]
        ho, wo, qh, qw, hp, wp = g[10], g[11], g[12], g[13], g[14], g[15]
        patch = kh * kw * cin
        rows = batch * ho * wo
        dp = (delta_a if in_a else delta_b)[: batch * hp * wp * cout]
        z = zbuf[offs[layer, 3] : offs[layer, 3] + rows * cout]
        if qh * qw > 1:
            dz = (delta_b if in_a else delta_a)[: rows * cout]
            dz_in_a = not in_a
            for t in range(rows * cout):
                dz[t] = 0.0
            arg = argbuf[offs[layer, 4] : offs[layer, 4] + batch * hp * wp * cout]
            for t in range(batch * hp * wp * cout):
                dz[arg[t]] = dp[t]
        else:
            dz = dp
            dz_in_a = in_a
        for t in range(rows * cout):
            dz[t] = dz[t] if z[t] > 0.0 else 0.0  # branch-free: the mask is random
        dz2 = dz.reshape((rows, cout))
        gb = grad[offs[layer, 1] : offs[layer, 1] + cout]
        for c in range(cout):
            gb[c] = 0.0
        for r in range(rows):
            for c in range(cout):
                gb[c] += dz2[r, c]
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
        for b0 in range(0, batch, step):
            b1 = min(b0 + step, batch)
            n = (b1 - b0) * ho * wo
            c2 = cols[: n * patch].reshape((n, patch))
            _im2col(a, layer == 0, g, b0, b1, cols)
            dzc = dz2[b0 * ho * wo : b1 * ho * wo]
            if b0 == 0:
                np.dot(c2.T, dzc, gw)
            else:
                np.dot(c2.T, dzc, part)
                gw += part
            if layer > 0:
                dc = dcols[: n * patch]
                np.dot(dzc, wmat.T, dc.reshape((n, patch)))
                _col2im(dc, g, b0, b1, da)
        if layer > 0:
            in_a = not dz_in_a
    return loss, correct


class NumbaCNNKernel:
    """Compiled loss/gradient and prediction for one :class:`~fastdist.models.cnn.CNN`.

    Workspaces are sized for ``max_batch`` rows when first needed; prediction runs in
    chunks of at most 64 rows, so evaluating a large test set does not size im2col
    buffers for it.
    """

    name = "numba"
    _PREDICT_CHUNK = 64

    def __init__(self, model, max_batch: int) -> None:
        self.model = model
        self.max_batch = int(max_batch)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._geom = np.array([c.row() for c in model.convs], dtype=np.int64)
        self._dense = np.asarray(model.dense, dtype=np.int64)
        self._workspaces: dict[int, tuple] = {}

    def _workspace(self, rows: int) -> tuple:
        """(offsets, cols, z, pooled, argmax, dense acts, dcols, dW part, delta_a, delta_b) for
        up to ``rows`` rows, allocated once per size."""
        if rows in self._workspaces:
            return self._workspaces[rows]
        m = self.model
        layout = m.layout
        offs = np.zeros((len(m.convs) + len(m.dense) - 1, 5), dtype=np.int64)
        n_z = n_p = n_acts = n_cols = widest_w = 0
        widest = max(m.dense)
        for layer, c in enumerate(m.convs):
            weight, bias = (
                layout.bounds(f"conv{layer}.weight")[0],
                layout.bounds(f"conv{layer}.bias")[0],
            )
            # Samples per chunk: im2col columns of about _CHUNK_FLOATS, at least one sample.
            step = max(1, min(rows, _CHUNK_FLOATS // (c.ho * c.wo * c.patch)))
            offs[layer] = (weight, bias, step, n_z, n_p)
            n_cols = max(n_cols, step * c.ho * c.wo * c.patch)
            widest_w = max(widest_w, c.patch * c.cout)
            n_z += rows * c.ho * c.wo * c.cout
            n_p += rows * c.hp * c.wp * c.cout if c.qh * c.qw > 1 else 0
            widest = max(widest, c.ho * c.wo * c.cout, c.h * c.w * c.cin)
        for j in range(len(m.dense) - 1):
            offs[len(m.convs) + j] = (layout.bounds(f"dense{j}.weight")[0],
                                      layout.bounds(f"dense{j}.bias")[0], 0, n_acts, 0)  # fmt: skip
            n_acts += rows * m.dense[j + 1]
        f32 = np.float32
        ws = (
            offs,
            np.empty(max(n_cols, 1), f32),
            np.empty(max(n_z, 1), f32),
            np.empty(max(n_p, 1), f32),
            np.empty(max(n_p, 1), np.int64),
            np.empty(max(n_acts, 1), f32),
            np.empty(max(n_cols, 1), f32),
            np.empty(max(widest_w, 1), f32),
            np.empty(rows * widest, f32),
            np.empty(rows * widest, f32),
        )
        self._workspaces[rows] = ws
        return ws

    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, grad_out: np.ndarray
    ) -> tuple[float, int]:
        """Write d(mean loss)/d(params) into ``grad_out``; return (mean loss, #correct)."""
        if x.shape[0] > self.max_batch:
            raise ValueError(f"batch of {x.shape[0]} exceeds the workspace ({self.max_batch})")
        if x.shape[0] == 0:
            grad_out[:] = 0.0
            return 0.0, 0
        offs, cols, z, p, arg, acts, dcols, part, da, db = self._workspace(self.max_batch)
        loss, correct = _loss_and_grad(
            params, self._geom, self._dense, offs, np.ascontiguousarray(x), y, grad_out,
            cols, z, p, arg, acts, dcols, part, da, db,
        )  # fmt: skip
        return float(loss), int(correct)

    def logits(self, params: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
        """Logits of ``x`` into ``out``, in chunks."""
        chunk = min(self.max_batch, self._PREDICT_CHUNK)
        offs, cols, z, p, arg, acts, _, _, _, _ = self._workspace(chunk)
        for lo in range(0, x.shape[0], chunk):
            hi = min(lo + chunk, x.shape[0])
            xs = np.ascontiguousarray(x[lo:hi], dtype=np.float32)
            out[lo:hi] = _forward(
                params, self._geom, self._dense, offs, xs, hi - lo, cols, z, p, arg, acts
            )
