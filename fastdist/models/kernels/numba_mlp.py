"""Numba MLP forward/backward writing into buffers allocated once.

Layers are walked inside one compiled function over the flat parameter vector, so a
training step costs one Python->Numba call. Matrix products go to BLAS through
``np.dot(a, b, out)``: Numba links SciPy's OpenBLAS, a different library from NumPy's,
which a later ``threadpool_limits`` call does not reliably reach; that is why workers pin
``OPENBLAS_NUM_THREADS`` in their environment before import (see
:mod:`fastdist.engine.threads`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastdist.models.kernels.numba_loss import softmax_cross_entropy

__all__ = ["NumbaKernel"]


@njit(cache=True, nogil=True)
def _forward(params, sizes, x, acts):
    """Fill ``acts`` with every layer's output (hidden ReLU outputs, then logits).

    ``acts`` is a flat workspace; layer l's output occupies ``batch * sizes[l + 1]``
    values starting at the sum of the previous layers' widths times ``batch``.
    """
    batch = x.shape[0]
    n_layers = sizes.shape[0] - 1
    pos = 0
    act_pos = 0
    h = x
    for layer in range(n_layers):
        fan_in = sizes[layer]
        fan_out = sizes[layer + 1]
        w = params[pos : pos + fan_in * fan_out].reshape((fan_in, fan_out))
        pos += fan_in * fan_out
        b = params[pos : pos + fan_out]
        pos += fan_out
        z = acts[act_pos : act_pos + batch * fan_out].reshape((batch, fan_out))
        act_pos += batch * fan_out
        np.dot(h, w, z)
        relu = layer < n_layers - 1
        for i in range(batch):
            for j in range(fan_out):
                v = z[i, j] + b[j]
                if relu and v < 0.0:
                    v = 0.0
                z[i, j] = v
        h = z
    return h


@njit(cache=True, nogil=True)
def _loss_and_grad(params, sizes, x, y, grad, acts, delta_a, delta_b):
    batch = x.shape[0]
    n_layers = sizes.shape[0] - 1
    logits = _forward(params, sizes, x, acts)
    n_classes = sizes[n_layers]

    # Softmax cross-entropy; delta = (softmax - onehot) / batch.
    delta = delta_a[: batch * n_classes].reshape((batch, n_classes))
    loss, correct = softmax_cross_entropy(logits, y, delta)

    # Backward, last layer first. Layer offsets are recomputed from the sizes.
    w_offsets = np.empty(n_layers, dtype=np.int64)
    act_offsets = np.empty(n_layers, dtype=np.int64)
    pos = 0
    act_pos = 0
    for layer in range(n_layers):
        w_offsets[layer] = pos
        act_offsets[layer] = act_pos
        pos += sizes[layer] * sizes[layer + 1] + sizes[layer + 1]
        act_pos += batch * sizes[layer + 1]

    use_a = True
    for layer in range(n_layers - 1, -1, -1):
        fan_in = sizes[layer]
        fan_out = sizes[layer + 1]
        start = w_offsets[layer]
        if layer == 0:
            h_in = x
        else:
            lo = act_offsets[layer - 1]
            h_in = acts[lo : lo + batch * fan_in].reshape((batch, fan_in))
        gw = grad[start : start + fan_in * fan_out].reshape((fan_in, fan_out))
        gb = grad[start + fan_in * fan_out : start + fan_in * fan_out + fan_out]
        np.dot(h_in.T, delta, gw)
        for j in range(fan_out):
            gb[j] = 0.0
        for i in range(batch):
            for j in range(fan_out):
                gb[j] += delta[i, j]
        if layer > 0:
            w = params[start : start + fan_in * fan_out].reshape((fan_in, fan_out))
            buf = delta_b if use_a else delta_a
            use_a = not use_a
            prev = buf[: batch * fan_in].reshape((batch, fan_in))
            np.dot(delta, w.T, prev)
            for i in range(batch):
                for j in range(fan_in):
                    if h_in[i, j] <= 0.0:
                        prev[i, j] = 0.0
            delta = prev
    return loss, correct


class NumbaKernel:
    """Compiled loss/gradient and prediction for one :class:`~fastdist.models.mlp.MLP`.

    Workspaces are sized for ``max_batch`` rows once; calls with fewer rows reuse them,
    so the training loop allocates nothing per step.
    """

    name = "numba"

    def __init__(self, mlp, max_batch: int) -> None:
        self.model = mlp
        self.max_batch = int(max_batch)
        self._sizes = np.asarray(mlp.sizes, dtype=np.int64)
        widest = max(mlp.sizes)
        self._acts = np.empty(self.max_batch * sum(mlp.sizes[1:]), dtype=np.float32)
        self._delta_a = np.empty(self.max_batch * widest, dtype=np.float32)
        self._delta_b = np.empty(self.max_batch * widest, dtype=np.float32)

    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, grad_out: np.ndarray
    ) -> tuple[float, int]:
        """Write d(mean loss)/d(params) into ``grad_out``; return (mean loss, #correct)."""
        if x.shape[0] > self.max_batch:
            raise ValueError(f"batch of {x.shape[0]} exceeds the workspace ({self.max_batch})")
        loss, correct = _loss_and_grad(
            params, self._sizes, x, y, grad_out, self._acts, self._delta_a, self._delta_b
        )
        return float(loss), int(correct)

    def logits(self, params: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
        """Logits of ``x`` into ``out``, in chunks of at most ``max_batch`` rows."""
        for lo in range(0, x.shape[0], self.max_batch):
            hi = min(lo + self.max_batch, x.shape[0])
            out[lo:hi] = _forward(params, self._sizes, x[lo:hi], self._acts)
