"""Winograd F(2x2, 3x3) convolutions for the Numba CNN kernel: 3x3, stride 1, unpadded
conv layers with an even output size and a channels-last input (every layer after the
first), forward and backward. W3's second conv (32 -> 64 channels, 26x26 -> 24x24) is
one.

Each 2x2 block of outputs is computed from the 4x4 block of inputs under it: the input
tile ``d`` becomes ``V = B^T d B`` (16 positions), the 3x3 kernel ``g`` becomes ``U = G g
G^T``, and the 16 products ``V[xi] @ U[xi]`` (one GEMM per position over all of a
sample's tiles, channels as the inner dimension) give the outputs as ``A^T M A``. That is
16 products per 2x2 outputs instead of 36: 2.25x fewer flops than im2col + GEMM, and
no im2col copy.

The backward pass is the forward's adjoint, one sample (or chunk of samples) at a time:
the output gradient's 2x2 blocks become ``dM = A dY A^T``; backward-weights is Winograd
F(3x3, 2x2), ``dU[xi] += V[xi]^T @ dM[xi]`` over the chunk's tiles, summed over the chunks
before one ``G^T . G`` back to the 3x3 kernels; backward-data multiplies the same ``dM``
by ``U^T`` (``dV[xi] = dM[xi] @ U[xi]^T``) and adds each tile's ``B dV B^T`` into the
input gradient (the tiles overlap by two rows and columns). So ``dM`` is transformed
once for both, and backward-data needs no zero-padded "full" convolution: that earlier
design transformed 169 tiles of 64 channels per W3 sample where this one transforms 144
of 32, and W3's backward went from 20 to 16 ms.

The arithmetic differs from im2col + GEMM's (about 1e-6 relative on W3's second conv);
it is deterministic.

Buffers: ``U`` (16, cin, cout) transformed kernels (transposed, (16, cout, cin), for
backward-data), ``V`` (16, tiles, channels) and ``M`` (16, tiles, channels) one sample's
transformed inputs and products (one chunk's transformed inputs and output gradients in
the backward pass, then ``dV`` in ``V``), ``tmp`` (4, 4, channels) one tile's
half-transformed rows; the backward pass also sums into (16, cin, cout) and transforms
four map rows at a time.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "winograd_applies",
    "winograd_backward",
    "winograd_forward",
    "winograd_kernels",
]


def winograd_applies(c, first: bool) -> bool:
    """Whether a :class:`~fastdist.models.conv_layer.ConvLayer` runs through Winograd:
    3x3, stride 1, no padding, an even output, and an NHWC input (not the first layer,
    whose input is channels-first arena rows)."""
    return (
        not first
        and (c.kh, c.kw, c.sh, c.sw, c.ph, c.pw) == (3, 3, 1, 1, 0, 0)
        and c.ho % 2 == 0
        and c.wo % 2 == 0
    )


@njit(cache=True, nogil=True)
def winograd_kernels(wmat, cin, cout, transposed, u):
    """``U = G g G^T`` of every (cin, cout) kernel of ``wmat`` (rows (i, j, cin), columns
    cout) into ``u``: (16, cin, cout) for the forward pass; with ``transposed``, for
    backward-data, the same ``U`` with the channel axes swapped, (16, cout, cin), so
    that ``dM @ U^T`` multiplies contiguous matrices (BLAS ran it 1.5x slower through a
    transposed view)."""
    uf = u[: 16 * cin * cout]
    t = np.empty((4, 3, cout), dtype=wmat.dtype)
    for c in range(cin):
        # t = G g (4 x 3), each entry a run of cout values
        for j in range(3):
            g0 = wmat[(0 * 3 + j) * cin + c]
            g1 = wmat[(1 * 3 + j) * cin + c]
            g2 = wmat[(2 * 3 + j) * cin + c]
            t0, t1, t2, t3 = t[0, j], t[1, j], t[2, j], t[3, j]
            for d in range(cout):
                t0[d] = g0[d]
                t1[d] = 0.5 * (g0[d] + g1[d] + g2[d])
                t2[d] = 0.5 * (g0[d] - g1[d] + g2[d])
                t3[d] = g2[d]
        # U = t G^T (4 x 4)
        for r in range(4):
            e0, e1, e2 = t[r, 0], t[r, 1], t[r, 2]
            for d in range(cout):
                v0 = e0[d]
                v1 = 0.5 * (e0[d] + e1[d] + e2[d])
                v2 = 0.5 * (e0[d] - e1[d] + e2[d])
                v3 = e2[d]
                if transposed:
                    uf[((r * 4 + 0) * cout + d) * cin + c] = v0
                    uf[((r * 4 + 1) * cout + d) * cin + c] = v1
                    uf[((r * 4 + 2) * cout + d) * cin + c] = v2
                    uf[((r * 4 + 3) * cout + d) * cin + c] = v3
                else:
                    uf[((r * 4 + 0) * cin + c) * cout + d] = v0
                    uf[((r * 4 + 1) * cin + c) * cout + d] = v1
                    uf[((r * 4 + 2) * cin + c) * cout + d] = v2
                    uf[((r * 4 + 3) * cin + c) * cout + d] = v3


@njit(cache=True, nogil=True)
def _tiles_in(src, ws, ch, th, tw, v, first, tmp):
    """``V[xi, first + ty * tw + tx] = (B^T d B)[xi]`` for the 4x4 input tiles ``d`` at rows
    ``2 ty ..``, columns ``2 tx ..`` of ``src`` (one sample, NHWC, ``ws`` wide, ``ch``
    channels)."""
    row = ws * ch
    for ty in range(th):
        for tx in range(tw):
            t = first + ty * tw + tx
            for s in range(4):  # B^T d, column s
                base = ((2 * ty) * ws + 2 * tx + s) * ch
                d0 = src[base : base + ch]
                d1 = src[base + row : base + row + ch]
                d2 = src[base + 2 * row : base + 2 * row + ch]
                d3 = src[base + 3 * row : base + 3 * row + ch]
                t0, t1, t2, t3 = tmp[0, s], tmp[1, s], tmp[2, s], tmp[3, s]
                for c in range(ch):
                    a0, a1, a2, a3 = d0[c], d1[c], d2[c], d3[c]
                    t0[c] = a0 - a2
                    t1[c] = a1 + a2
                    t2[c] = a2 - a1
                    t3[c] = a1 - a3
            for r in range(4):  # (B^T d) B, row r
                e0, e1, e2, e3 = tmp[r, 0], tmp[r, 1], tmp[r, 2], tmp[r, 3]
                v0, v1, v2, v3 = v[r * 4, t], v[r * 4 + 1, t], v[r * 4 + 2, t], v[r * 4 + 3, t]
                for c in range(ch):
                    a0, a1, a2, a3 = e0[c], e1[c], e2[c], e3[c]
                    v0[c] = a0 - a2
                    v1[c] = a1 + a2
                    v2[c] = a2 - a1
                    v3[c] = a1 - a3


@njit(cache=True, nogil=True)
def _tiles_out(m, th, tw, ch, dst, wd, bias, relu, tmp):
    """``dst``'s 2x2 output blocks ``A^T M A`` (one sample, NHWC, ``wd`` wide, ``ch``
    channels); with ``relu``, ``max(. + bias, 0)``."""
    for ty in range(th):
        for tx in range(tw):
            t = ty * tw + tx
            for s in range(4):  # A^T M, column s
                m0, m1, m2, m3 = m[s, t], m[4 + s, t], m[8 + s, t], m[12 + s, t]
                a0, a1 = tmp[0, s], tmp[1, s]
                for d in range(ch):
                    x0, x1, x2, x3 = m0[d], m1[d], m2[d], m3[d]
                    a0[d] = x0 + x1 + x2
                    a1[d] = x1 - x2 - x3
            for r in range(2):  # (A^T M) A, row r
                e0, e1, e2, e3 = tmp[r, 0], tmp[r, 1], tmp[r, 2], tmp[r, 3]
                o = ((2 * ty + r) * wd + 2 * tx) * ch
                y0 = dst[o : o + ch]
                y1 = dst[o + ch : o + 2 * ch]
                if relu:
                    for d in range(ch):
                        x0, x1, x2, x3, bd = e0[d], e1[d], e2[d], e3[d], bias[d]
                        p = x0 + x1 + x2 + bd
                        q = x1 - x2 - x3 + bd
                        y0[d] = p if p > 0.0 else np.float32(0.0)
                        y1[d] = q if q > 0.0 else np.float32(0.0)
                else:
                    for d in range(ch):
                        x0, x1, x2, x3 = e0[d], e1[d], e2[d], e3[d]
                        y0[d] = x0 + x1 + x2
                        y1[d] = x1 - x2 - x3


# The transforms' inner loops run over channels. With the channel count a compile-time
# constant LLVM vectorises them without a runtime trip count (1.6x faster on W3's
# second conv), so the common counts get their own compiled copy; the arithmetic is
# the same.


@njit(cache=True, nogil=True)
def _in(src, ws, ch, th, tw, v, first, tmp):
    """:func:`_tiles_in`, compiled for ``ch`` as a constant where it is 16, 32, 64 or
    128."""
    if ch == 16:
        _tiles_in(src, ws, 16, th, tw, v, first, tmp)
    elif ch == 32:
        _tiles_in(src, ws, 32, th, tw, v, first, tmp)
    elif ch == 64:
        _tiles_in(src, ws, 64, th, tw, v, first, tmp)
    elif ch == 128:
        _tiles_in(src, ws, 128, th, tw, v, first, tmp)
    else:
        _tiles_in(src, ws, ch, th, tw, v, first, tmp)


@njit(cache=True, nogil=True)
def _out(m, th, tw, ch, dst, wd, bias, relu, tmp):
    """:func:`_tiles_out`, compiled for ``ch`` as a constant where it is 16, 32, 64 or
    128."""
    if ch == 16:
        _tiles_out(m, th, tw, 16, dst, wd, bias, relu, tmp)
    elif ch == 32:
        _tiles_out(m, th, tw, 32, dst, wd, bias, relu, tmp)
    elif ch == 64:
        _tiles_out(m, th, tw, 64, dst, wd, bias, relu, tmp)
    elif ch == 128:
        _tiles_out(m, th, tw, 128, dst, wd, bias, relu, tmp)
    else:
        _tiles_out(m, th, tw, ch, dst, wd, bias, relu, tmp)


@njit(cache=True, nogil=True)
def winograd_forward(a, g, batch, u, bias, z, vbuf, mbuf, tmp):
    """ReLU(conv(a) + bias) into ``z`` (NHWC, flat), ``a`` NHWC flat; ``u`` from
    :func:`winograd_kernels` (forward). One sample's tiles per 16 GEMMs."""
    cin, h, w, cout, ho, wo = g[0], g[1], g[2], g[3], g[10], g[11]
    th, tw = ho // 2, wo // 2
    tiles = th * tw
    uu = u[: 16 * cin * cout].reshape((16, cin, cout))
    v = vbuf[: 16 * tiles * cin].reshape((16, tiles, cin))
    m = mbuf[: 16 * tiles * cout].reshape((16, tiles, cout))
    for b in range(batch):
        _in(a[b * h * w * cin : (b + 1) * h * w * cin], w, cin, th, tw, v, 0, tmp)
        for xi in range(16):
            np.dot(v[xi], uu[xi], m[xi])
        _out(m, th, tw, cout, z[b * ho * wo * cout : (b + 1) * ho * wo * cout], wo,
                   bias, True, tmp)  # fmt: skip


@njit(cache=True, nogil=True)
def _tiles_grad(src, wd, ch, th, tw, v, first, rows):
    """``V[xi, first + ty * tw + tx] = (A dY A^T)[xi]`` for the 2x2 blocks ``dY`` at rows
    ``2 ty ..``, columns ``2 tx ..`` of ``src`` (one sample's output gradient, NHWC,
    ``wd`` wide, ``ch`` channels): the adjoint of :func:`_tiles_out`'s ``A^T M A``.

    A whole row of tiles at a time: ``A dY`` over the two map rows into ``rows`` (4 map
    rows), then ``(A dY) A^T`` per tile. As in every transform here, each loop reads
    its inputs into locals before its stores: the views may alias, so an expression
    reading them after a store reloads them (the transforms ran 5-15% slower so)."""
    row = wd * ch
    e = rows[: 4 * row].reshape((4, row))
    e0, e1, e2, e3 = e[0], e[1], e[2], e[3]
    for ty in range(th):
        base = 2 * ty * row
        d0 = src[base : base + row]
        d1 = src[base + row : base + 2 * row]
        for k in range(row):  # A dY: y0, y0 + y1, y0 - y1, -y1
            y0, y1 = d0[k], d1[k]
            e0[k] = y0
            e1[k] = y0 + y1
            e2[k] = y0 - y1
            e3[k] = -y1
        t = first + ty * tw
        for r in range(4):  # (A dY) A^T, row r: p, p + q, p - q, -q
            er = e[r]
            v0, v1 = v[r * 4, t : t + tw], v[r * 4 + 1, t : t + tw]
            v2, v3 = v[r * 4 + 2, t : t + tw], v[r * 4 + 3, t : t + tw]
            for tx in range(tw):
                o = 2 * tx * ch
                p, q = er[o : o + ch], er[o + ch : o + 2 * ch]
                w0, w1, w2, w3 = v0[tx], v1[tx], v2[tx], v3[tx]
                for c in range(ch):
                    pc, qc = p[c], q[c]
                    w0[c] = pc
                    w1[c] = pc + qc
                    w2[c] = pc - qc
                    w3[c] = -qc


@njit(cache=True, nogil=True)
def _grad(src, wd, ch, th, tw, v, first, rows):
    """:func:`_tiles_grad`, compiled for ``ch`` as a constant where it is 16, 32, 64 or
    128."""
    if ch == 16:
        _tiles_grad(src, wd, 16, th, tw, v, first, rows)
    elif ch == 32:
        _tiles_grad(src, wd, 32, th, tw, v, first, rows)
    elif ch == 64:
        _tiles_grad(src, wd, 64, th, tw, v, first, rows)
    elif ch == 128:
        _tiles_grad(src, wd, 128, th, tw, v, first, rows)
    else:
        _tiles_grad(src, wd, ch, th, tw, v, first, rows)


@njit(cache=True, nogil=True)
def _tiles_in_adjoint(v, th, tw, ch, dst, wd, first, tmp):
    """Add ``B dV[., first + ty * tw + tx] B^T`` of every tile into the 4x4 block of
    ``dst`` at rows ``2 ty ..``, columns ``2 tx ..`` (one sample, NHWC, ``wd`` wide,
    ``ch`` channels): the adjoint of :func:`_tiles_in`. ``B`` combines rows (and
    columns) as (q0, q1 - q2 + q3, q1 + q2 - q0, -q3).

    Each loop reads its inputs into locals before writing its four outputs: written as
    one loop per output, re-reading the inputs after every store (the views may alias),
    the same transform ran 1.8x slower (3.5x with the channel count a run-time value)."""
    row = wd * ch
    for ty in range(th):
        for tx in range(tw):
            t = first + ty * tw + tx
            for r in range(4):  # dV B^T, row r
                q0, q1, q2, q3 = v[r * 4, t], v[r * 4 + 1, t], v[r * 4 + 2, t], v[r * 4 + 3, t]
                p0, p1, p2, p3 = tmp[r, 0], tmp[r, 1], tmp[r, 2], tmp[r, 3]
                for c in range(ch):
                    a0, a1, a2, a3 = q0[c], q1[c], q2[c], q3[c]
                    p0[c] = a0
                    p1[c] = a1 - a2 + a3
                    p2[c] = a1 + a2 - a0
                    p3[c] = -a3
            for s in range(4):  # B (dV B^T), column s, added into the map
                e0, e1, e2, e3 = tmp[0, s], tmp[1, s], tmp[2, s], tmp[3, s]
                o = ((2 * ty) * wd + 2 * tx + s) * ch
                y0 = dst[o : o + ch]
                y1 = dst[o + row : o + row + ch]
                y2 = dst[o + 2 * row : o + 2 * row + ch]
                y3 = dst[o + 3 * row : o + 3 * row + ch]
                for c in range(ch):
                    b0, b1, b2, b3 = e0[c], e1[c], e2[c], e3[c]
                    y0[c] += b0
                    y1[c] += b1 - b2 + b3
                    y2[c] += b1 + b2 - b0
                    y3[c] -= b3


@njit(cache=True, nogil=True)
def winograd_backward(a, dz, g, batch, step, gw, ut, da, need_da, vbuf, mbuf, acc, part, tmp,
                      rows):  # fmt: skip
    """d(loss)/d(weights) into ``gw`` (rows (i, j, cin), columns cout) and, with
    ``need_da``, d(loss)/d(input) into ``da`` (NHWC, flat) from the layer's input ``a``
    and ``dz`` (d(loss)/d(pre-ReLU output)), both NHWC flat; ``ut`` from
    :func:`winograd_kernels` (transposed).

    Per chunk of ``step`` samples: the input tiles' ``V = B^T d B`` and the output
    gradient's ``dM = A dY A^T`` (16 positions each); 16 GEMMs ``V[xi]^T @ dM[xi]``
    whose inner dimension is every tile of the chunk, summed over the chunks in ``acc``
    (16, cin, cout), and finally ``gw = G^T acc G`` (Winograd F(3x3, 2x2)); then 16 GEMMs
    ``dV[xi] = dM[xi] @ U[xi]^T`` into ``V``'s buffer and each sample's tiles' ``B dV B^T``
    added into its zeroed ``da``."""
    cin, h, w, cout, ho, wo = g[0], g[1], g[2], g[3], g[10], g[11]
    th, tw = ho // 2, wo // 2
    tiles = th * tw
    mh = acc[: 16 * cin * cout].reshape((16, cin, cout))
    pt = part[: 16 * cin * cout].reshape((16, cin, cout))
    uu = ut[: 16 * cin * cout].reshape((16, cout, cin))
    for b0 in range(0, batch, step):
        b1 = min(b0 + step, batch)
        n = (b1 - b0) * tiles
        v = vbuf[: 16 * n * cin].reshape((16, n, cin))
        m = mbuf[: 16 * n * cout].reshape((16, n, cout))
        for b in range(b0, b1):
            first = (b - b0) * tiles
            _in(a[b * h * w * cin : (b + 1) * h * w * cin], w, cin, th, tw, v, first, tmp)
            _grad(dz[b * ho * wo * cout : (b + 1) * ho * wo * cout], wo, cout, th, tw, m,
                        first, rows)  # fmt: skip
        for xi in range(16):
            np.dot(v[xi].T, m[xi], mh[xi] if b0 == 0 else pt[xi])
        if b0 > 0:
            accf, partf = acc[: 16 * cin * cout], part[: 16 * cin * cout]
            for k in range(16 * cin * cout):
                accf[k] += partf[k]
        if need_da:  # V is free again: dV goes there
            for xi in range(16):
                np.dot(m[xi], uu[xi], v[xi])
            for b in range(b0, b1):
                dst = da[b * h * w * cin : (b + 1) * h * w * cin]
                for k in range(h * w * cin):
                    dst[k] = 0.0
                _tiles_in_adjoint(v, th, tw, cin, dst, w, (b - b0) * tiles, tmp)
    # gw[(i, j, c), d] = (G^T M G)[i, j], G^T's rows (1, 1/2, 1/2, 0), (0, 1/2, -1/2, 0),
    # (0, 1/2, 1/2, 1).
    out = gw.reshape((3, 3, cin, cout))
    t = np.empty((3, 4, cout), dtype=gw.dtype)
    for c in range(cin):
        for s in range(4):  # G^T M, column s
            m0, m1, m2, m3 = mh[s, c], mh[4 + s, c], mh[8 + s, c], mh[12 + s, c]
            t0, t1, t2 = t[0, s], t[1, s], t[2, s]
            for d in range(cout):
                t0[d] = m0[d] + 0.5 * (m1[d] + m2[d])
                t1[d] = 0.5 * (m1[d] - m2[d])
                t2[d] = 0.5 * (m1[d] + m2[d]) + m3[d]
        for i in range(3):  # (G^T M) G, row i
            e0, e1, e2, e3 = t[i, 0], t[i, 1], t[i, 2], t[i, 3]
            o0, o1, o2 = out[i, 0, c], out[i, 1, c], out[i, 2, c]
            for d in range(cout):
                o0[d] = e0[d] + 0.5 * (e1[d] + e2[d])
                o1[d] = 0.5 * (e1[d] - e2[d])
                o2[d] = 0.5 * (e1[d] + e2[d]) + e3[d]
