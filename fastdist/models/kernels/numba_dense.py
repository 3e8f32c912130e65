"""The dense (fully connected) layers of the Numba kernels: the whole MLP, and the CNN
after its conv layers. Hidden layers are ReLU, the last gives the logits.

Where a layer's tensors sit is a row of an int64 table, ``offs[j]`` = (weight offset,
bias offset, output offset): the first two index the flat parameter (and gradient)
vector, the third the activation workspace ``acts``, laid out for the workspace's batch
(:func:`dense_offsets`). A smaller batch uses the start of each layer's region.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["dense_backward", "dense_forward", "dense_offsets"]


def dense_offsets(weights: list[int], biases: list[int], sizes, rows: int) -> np.ndarray:
    """The ``offs`` table: layer j's weight and bias offsets in the flat vector, and its
    output's offset in an activation workspace of ``rows`` rows (the layers' outputs
    back to back: ``rows * sum(sizes[1:])`` floats)."""
    outputs = np.cumsum([0, *(rows * s for s in sizes[1:-1])])
    return np.array(list(zip(weights, biases, outputs)), dtype=np.int64).reshape(-1, 3)


@njit(cache=True, nogil=True)
def _layer(params, fan_in, fan_out, o):
    """Layer ``o``'s (weight (fan_in, fan_out), bias) views of a flat vector."""
    w = params[o[0] : o[0] + fan_in * fan_out].reshape((fan_in, fan_out))
    return w, params[o[1] : o[1] + fan_out]


@njit(cache=True, nogil=True)
def dense_forward(params, sizes, offs, h, acts):
    """Every layer's output into ``acts``, from ``h`` (batch, sizes[0]); returns the
    logits (batch, sizes[-1]), a view of ``acts``."""
    batch = h.shape[0]
    n_layers = sizes.shape[0] - 1
    for j in range(n_layers):
        fan_in, fan_out = sizes[j], sizes[j + 1]
        w, b = _layer(params, fan_in, fan_out, offs[j])
        z = acts[offs[j, 2] : offs[j, 2] + batch * fan_out].reshape((batch, fan_out))
        np.dot(h, w, z)
        relu = j < n_layers - 1
        for i in range(batch):
            for k in range(fan_out):
                v = z[i, k] + b[k]
                if relu and v < 0.0:
                    v = np.float32(0.0)
                z[i, k] = v
        h = z
    return h


@njit(cache=True, nogil=True)
def dense_backward(params, sizes, offs, h0, acts, grad, delta_a, delta_b, to_input):
    """The layers' weight and bias gradients into ``grad``, last layer first, after
    :func:`dense_forward` from ``h0``.

    On entry ``delta_a`` holds d(loss)/d(logits), (batch, sizes[-1]); each layer's delta
    goes to the other buffer of the two. ``to_input``: also propagate through the first
    layer, to d(loss)/d(h0) (what a conv stack below needs; an MLP's input needs
    nothing). Returns whether the last delta written is in ``delta_a``.
    """
    batch = h0.shape[0]
    n_layers = sizes.shape[0] - 1
    delta = delta_a[: batch * sizes[n_layers]].reshape((batch, sizes[n_layers]))
    in_a = True
    for j in range(n_layers - 1, -1, -1):
        fan_in, fan_out = sizes[j], sizes[j + 1]
        if j == 0:
            h = h0
        else:
            h = acts[offs[j - 1, 2] : offs[j - 1, 2] + batch * fan_in].reshape((batch, fan_in))
        gw, gb = _layer(grad, fan_in, fan_out, offs[j])
        np.dot(h.T, delta, gw)
        for k in range(fan_out):
            gb[k] = 0.0
        for i in range(batch):
            for k in range(fan_out):
                gb[k] += delta[i, k]
        if j > 0 or to_input:
            w, _ = _layer(params, fan_in, fan_out, offs[j])
            prev = (delta_b if in_a else delta_a)[: batch * fan_in].reshape((batch, fan_in))
            in_a = not in_a
            np.dot(delta, w.T, prev)
            if j > 0:  # h is a ReLU output: (h > 0) is the ReLU's derivative
                for i in range(batch):
                    for k in range(fan_in):
                        prev[i, k] = prev[i, k] if h[i, k] > 0.0 else np.float32(0.0)
            delta = prev
    return in_a
