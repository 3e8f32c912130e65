"""im2col and its adjoint col2im for the Numba CNN kernel: one conv layer's input patches
as the rows of a matrix, channels-last, for a chunk of samples.

Every function here reads a layer's geometry as a row of ints, ``g``, whose columns are
:data:`GEOM` (:meth:`fastdist.models.conv_layer.ConvLayer.row` builds it); the other CNN
kernel modules index the same columns.
"""

from __future__ import annotations

from numba import njit

__all__ = ["GEOM", "im2col", "col2im"]

# Columns of a geometry row (ConvLayer.row()).
GEOM = (
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
def im2col(a, first, g, b0, b1, cols):
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
def col2im(dcols, g, b0, b1, da):
    """Adjoint of :func:`im2col` (NHWC) into ``da`` for samples ``b0 <= b < b1``.

    A gather, not a scatter-add: each input pixel sums the column entries that copied
    it and is written once (the scatter's read-modify-write of ``da``, nine times per
    pixel for a 3x3 kernel, ran 3x slower). The taps are summed from 0.0 in the order
    the scatter added them (output pixel ascending, so kernel offset descending), so
    the result is the scatter's to the bit."""
    cin, h, w = g[0], g[1], g[2]
    kh, kw, sh, sw, ph, pw, ho, wo = g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11]
    patch = kh * kw * cin
    for b in range(b0, b1):
        for y in range(h):
            for xx in range(w):
                o = ((b * h + y) * w + xx) * cin
                dv = da[o : o + cin]
                for c in range(cin):
                    dv[c] = 0.0
                for i in range(kh - 1, -1, -1):
                    t = y + ph - i  # = oh * sh for the output row that tap i reads y from
                    if t < 0 or t % sh != 0 or t // sh >= ho:
                        continue
                    for j in range(kw - 1, -1, -1):
                        u = xx + pw - j
                        if u < 0 or u % sw != 0 or u // sw >= wo:
                            continue
                        r = (((b - b0) * ho + t // sh) * wo + u // sw) * patch + (i * kw + j) * cin
                        sv = dcols[r : r + cin]
                        for c in range(cin):
                            dv[c] += sv[c]
