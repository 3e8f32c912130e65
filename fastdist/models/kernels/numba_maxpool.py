"""Max-pooling for the Numba CNN kernel: non-overlapping windows of a channels-last feature
map, keeping each window's argmax for the backward pass (geometry row: see
:data:`~fastdist.models.kernels.numba_im2col.GEOM`)."""

from __future__ import annotations

from numba import njit

__all__ = ["max_pool"]


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
