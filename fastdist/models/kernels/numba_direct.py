"""Direct convolution for the Numba CNN kernel's first layer when it reads one input
channel at stride 1 (W3's first conv: 1 -> 32 channels, 3x3, 28x28 -> 26x26).

With one input channel an im2col row is just the ``kh * kw`` taps, so im2col + GEMM
copied nine floats to multiply them by a (9, cout) matrix: a GEMM of inner dimension 9,
far from BLAS's rate, behind an im2col copy nine times the input, and run twice
(forward and again in backward). On W3 that layer took 6.6 ms of a 48 ms step for 1.6%
of its FLOP. Here each output pixel's ``cout`` channels are summed tap by tap straight
from the input (the channel loop is what vectorises), with the bias and ReLU in the same
pass; backward-weights applies the ReLU mask, sums the bias gradient and accumulates
``dW[tap] += input * dZ`` per sample, then adds the sample's sum into ``dW`` (two levels,
like im2col's chunks, so float32 sums stay short). The first layer needs no
backward-data.

Only stride-1 layers are taken: the kernel handles any stride and padding (the tests
run it on both), but the MNIST-1D CNN's strided first layer stays on im2col so its
results stay bitwise unchanged. The summation order differs from the GEMM's (within
1e-6 relative on W3); it is deterministic.

Geometry rows: :data:`~fastdist.models.kernels.numba_im2col.GEOM`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["direct_applies", "direct_backward_weights", "direct_forward"]


def direct_applies(c, first: bool) -> bool:
    """Whether a :class:`~fastdist.models.conv_layer.ConvLayer` runs through the direct
    kernel: the first layer (no backward-data needed), one input channel, stride 1."""
    return first and c.cin == 1 and (c.sh, c.sw) == (1, 1)


@njit(cache=True, nogil=True)
def direct_forward(a, g, batch, wmat, bias, z):
    """``z`` = ReLU(conv(a) + bias), NHWC rows, from ``a``: ``batch`` single-channel
    maps, flat; ``wmat`` (kh * kw, cout)."""
    kh, kw, cout = g[4], g[5], g[3]
    taps = np.empty(kh * kw, np.float32)
    if kh == 3 and kw == 3 and cout == 16:
        _forward(a, g, batch, wmat, bias, z, 3, 3, 16, taps)
    elif kh == 3 and kw == 3 and cout == 32:
        _forward(a, g, batch, wmat, bias, z, 3, 3, 32, taps)
    elif kh == 3 and kw == 3 and cout == 64:
        _forward(a, g, batch, wmat, bias, z, 3, 3, 64, taps)
    else:
        _forward(a, g, batch, wmat, bias, z, kh, kw, cout, taps)


@njit(cache=True, nogil=True)
def direct_backward_weights(a, z, dz, g, batch, gw, gb, part):
    """The ReLU mask applied to ``dz`` in place (``z`` is the forward's ReLU output),
    the bias gradient into ``gb`` (summed over rows in order, as the other layers do)
    and the weight gradient into ``gw`` (kh * kw, cout); ``part`` holds one sample's sum."""
    kh, kw, cout = g[4], g[5], g[3]
    taps = np.empty(kh * kw, np.float32)
    if kh == 3 and kw == 3 and cout == 16:
        _backward_weights(a, z, dz, g, batch, gw, gb, part, 3, 3, 16, taps)
    elif kh == 3 and kw == 3 and cout == 32:
        _backward_weights(a, z, dz, g, batch, gw, gb, part, 3, 3, 32, taps)
    elif kh == 3 and kw == 3 and cout == 64:
        _backward_weights(a, z, dz, g, batch, gw, gb, part, 3, 3, 64, taps)
    else:
        _backward_weights(a, z, dz, g, batch, gw, gb, part, kh, kw, cout, taps)


# The bodies take the kernel size and ``cout`` as arguments so that the dispatchers
# above compile a copy for 3x3 kernels and common channel counts with them constants
# (LLVM inlines the body and propagates them): the tap loop unrolls, the channel loop
# vectorises, and the taps stay in registers. With them read at run time the same loops
# ran 10x slower (6.4 against 0.6 ms for W3's forward); other shapes take that path.


@njit(cache=True, nogil=True)
def _gather(a, g, b, oh, ow, kh, kw, taps):
    """One output pixel's input taps into ``taps`` (zeros in the padding)."""
    h, w, sh, sw, ph, pw = g[1], g[2], g[6], g[7], g[8], g[9]
    for i in range(kh):
        y = oh * sh - ph + i
        for j in range(kw):
            xx = ow * sw - pw + j
            inside = 0 <= y < h and 0 <= xx < w
            taps[i * kw + j] = a[(b * h + y) * w + xx] if inside else np.float32(0.0)


@njit(cache=True, nogil=True)
def _forward(a, g, batch, wmat, bias, z, kh, kw, cout, taps):
    ho, wo = g[10], g[11]
    n_taps = kh * kw
    w = wmat.reshape(wmat.size)
    for b in range(batch):
        for oh in range(ho):
            for ow in range(wo):
                _gather(a, g, b, oh, ow, kh, kw, taps)
                r = ((b * ho + oh) * wo + ow) * cout
                zr = z[r : r + cout]  # see _backward_weights
                for c in range(cout):
                    s = np.float32(0.0)
                    for k in range(n_taps):
                        s += taps[k] * w[k * cout + c]
                    s += bias[c]
                    zr[c] = s if s > 0.0 else np.float32(0.0)


@njit(cache=True, nogil=True)
def _backward_weights(a, z, dz, g, batch, gw, gb, part, kh, kw, cout, taps):
    ho, wo = g[10], g[11]
    n_taps = kh * kw
    gwf = gw.reshape(gw.size)
    for t in range(n_taps * cout):
        gwf[t] = 0.0
    for c in range(cout):
        gb[c] = 0.0
    for b in range(batch):
        for t in range(n_taps * cout):
            part[t] = 0.0
        for oh in range(ho):
            for ow in range(wo):
                _gather(a, g, b, oh, ow, kh, kw, taps)
                # Views indexed by the loop counter: ``dz[r + c]`` with ``r`` known only
                # at run time gets Numba's negative-index wraparound, which kept LLVM
                # from vectorising the loop (12 against 1.7 ms).
                r = ((b * ho + oh) * wo + ow) * cout
                zr = z[r : r + cout]
                dr = dz[r : r + cout]
                for c in range(cout):
                    # A float32 zero: a float64 0.0 here made the whole loop float64.
                    d = dr[c] if zr[c] > 0.0 else np.float32(0.0)
                    dr[c] = d
                    gb[c] += d
                    for k in range(n_taps):
                        part[k * cout + c] += taps[k] * d
        for t in range(n_taps * cout):
            gwf[t] += part[t]
