"""Buffers of the Numba CNN kernel, sized once for a batch: where each layer's weights,
activations, pooled maps and argmaxes sit, and how many samples one im2col chunk holds.

The batch is walked in chunks of samples whose columns fit in L2: a whole batch's
columns (42 MB for W3's second conv) would go to DRAM and back.
"""

from __future__ import annotations

import numpy as np

from fastdist.models.kernels.numba_dense import dense_offsets
from fastdist.models.kernels.numba_direct import direct_applies
from fastdist.models.kernels.numba_winograd import winograd_applies

__all__ = ["CHUNK_FLOATS", "DIRECT", "IM2COL", "WINOGRAD", "WINO_CHUNK_FLOATS", "workspace"]

# How a conv layer convolves (column 5 of the offsets table).
IM2COL, WINOGRAD, DIRECT = 0, 1, 2

# im2col columns per chunk of samples (floats): 128K floats = 512 KiB, within L2.
CHUNK_FLOATS = 1 << 17
# Winograd backward-weights' transformed tiles per chunk of samples (floats, inputs and
# output gradients together), at least one sample: 256K floats = 1 MiB, half of L2.
# On W3's second conv (221K floats a sample) one sample per chunk ran 10% faster than
# two and 2x faster than four.
WINO_CHUNK_FLOATS = 1 << 18


def workspace(model, rows: int) -> tuple:
    """(offsets, dense offsets, cols, z, pooled, argmax, dense acts, dcols, dW part,
    delta_a, delta_b, Winograd buffers) for up to ``rows`` rows of ``model`` (a
    :class:`~fastdist.models.cnn_record.CNN`).

    ``offsets[layer]`` = (weight offset, bias offset, samples per chunk (of im2col, or of
    the Winograd backward pass), z offset, pooled offset, how the layer convolves:
    :data:`IM2COL`, :data:`WINOGRAD` or :data:`DIRECT`) of a conv layer; the dense
    layers have their own table (:func:`~fastdist.models.kernels.numba_dense.dense_offsets`).
    The Winograd buffers (:mod:`~fastdist.models.kernels.numba_winograd`) are
    (transformed kernels, transformed inputs, products, four map rows of the output
    gradient, one tile's rows, the backward pass's transformed sum and one chunk's
    part), sized for the largest such layer (one sample at a time forward, a chunk
    backward), and of size 1 when there is none. Winograd and direct layers
    (:mod:`~fastdist.models.kernels.numba_direct`) need no im2col columns.
    """
    layout = model.layout
    offs = np.zeros((len(model.convs), 6), dtype=np.int64)
    n_z = n_p = n_cols = widest_w = 0
    n_u = n_vm = n_rows = n_ch = 1
    widest = max(model.dense)
    for layer, c in enumerate(model.convs):
        weight, bias = (
            layout.bounds(f"conv{layer}.weight")[0],
            layout.bounds(f"conv{layer}.bias")[0],
        )
        method = (
            WINOGRAD
            if winograd_applies(c, layer == 0)
            else DIRECT
            if direct_applies(c, layer == 0)
            else IM2COL
        )
        if method == DIRECT:
            step = rows  # one sweep over the batch
        elif method == WINOGRAD:
            # Samples per backward chunk: transformed tiles of about WINO_CHUNK_FLOATS.
            tiles = 16 * (c.ho // 2) * (c.wo // 2)
            step = max(1, min(rows, WINO_CHUNK_FLOATS // (tiles * (c.cin + c.cout))))
            n_u = max(n_u, 16 * c.cin * c.cout)
            n_vm = max(n_vm, step * tiles * max(c.cin, c.cout))  # step >= 1: the forward's too
            n_rows = max(n_rows, 4 * c.wo * c.cout)
            n_ch = max(n_ch, c.cin, c.cout)
        else:
            # Samples per chunk: im2col columns of about CHUNK_FLOATS, at least one sample.
            step = max(1, min(rows, CHUNK_FLOATS // (c.ho * c.wo * c.patch)))
            n_cols = max(n_cols, step * c.ho * c.wo * c.patch)
        offs[layer] = (weight, bias, step, n_z, n_p, method)
        widest_w = max(widest_w, c.patch * c.cout)
        n_z += rows * c.ho * c.wo * c.cout
        n_p += rows * c.hp * c.wp * c.cout if c.qh * c.qw > 1 else 0
        widest = max(widest, c.ho * c.wo * c.cout, c.h * c.w * c.cin)
    dense = range(len(model.dense) - 1)
    weights = [layout.bounds(f"dense{j}.weight")[0] for j in dense]
    biases = [layout.bounds(f"dense{j}.bias")[0] for j in dense]
    n_acts = rows * sum(model.dense[1:])
    f32 = np.float32
    return (
        offs,
        dense_offsets(weights, biases, model.dense, rows),
        np.empty(max(n_cols, 1), f32),
        np.empty(max(n_z, 1), f32),
        np.empty(max(n_p, 1), f32),
        np.empty(max(n_p, 1), np.int64),
        np.empty(max(n_acts, 1), f32),
        np.empty(max(n_cols, 1), f32),
        np.empty(max(widest_w, 1), f32),
        np.empty(rows * widest, f32),
        np.empty(rows * widest, f32),
        (
            np.empty(n_u, f32),
            np.empty(n_vm, f32),
            np.empty(n_vm, f32),
            np.empty(n_rows, f32),
            np.empty((4, 4, n_ch), f32),
            np.empty(n_u, f32),
            np.empty(n_u, f32),
        ),
    )
