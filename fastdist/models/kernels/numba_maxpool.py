"""Max-pooling for the Numba CNN kernel: non-overlapping windows of a channels-last feature
map, keeping each window's argmax for the backward pass, and that backward pass with the
ReLU mask and the bias gradient in the same sweep (geometry row: see
:data:`~fastdist.models.kernels.numba_im2col.GEOM`)."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["max_pool", "max_pool_backward"]


@njit(cache=True, nogil=True)
def max_pool(z, g, batch, p, arg):
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
def max_pool_backward(dp, arg, z, g, batch, dz, gb):
    """d(loss)/d(conv output) into ``dz`` from ``dp`` = d(loss)/d(pooled output): each
    pooled gradient goes to its window's argmax (``arg`` from :func:`max_pool`), times
    the ReLU's derivative (``z`` is the ReLU output), and the bias gradient ``gb`` sums
    ``dz``'s rows.

    One sweep over the conv output's rows in order, each row's channels vectorised with
    selects. It replaces four (zero ``dz``, scatter ``dp`` to the argmaxes, mask, sum
    the bias): 2.1 ms of W3's step, on a 9.4 MB map, went to 0.7 ms. Every value and the
    bias gradient's summation order are those of the four sweeps, so the result is the
    same to the bit. Rows past the last whole window (a pool that does not divide the
    map) get zeros."""
    cout, ho, wo, qh, qw, hp, wp = g[3], g[10], g[11], g[12], g[13], g[14], g[15]
    for c in range(cout):
        gb[c] = 0.0
    for b in range(batch):
        for oh in range(ho):
            oy = oh // qh
            for ow in range(wo):
                ox = ow // qw
                r = ((b * ho + oh) * wo + ow) * cout
                dr = dz[r : r + cout]
                if oy < hp and ox < wp:
                    t = ((b * hp + oy) * wp + ox) * cout
                    zr = z[r : r + cout]
                    pr = dp[t : t + cout]
                    ar = arg[t : t + cout]
                    for c in range(cout):
                        d = pr[c] if ar[c] == r + c and zr[c] > 0.0 else np.float32(0.0)
                        dr[c] = d
                        gb[c] += d
                else:
                    for c in range(cout):
                        dr[c] = 0.0
