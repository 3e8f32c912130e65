"""Numba MLP forward/backward writing into buffers allocated once.

Layers are walked inside one compiled function over the flat parameter vector, so a
training step costs one Python->Numba call; the layers themselves are the CNN's dense
layers (:mod:`~fastdist.models.kernels.numba_dense`). Matrix products go to BLAS through
``np.dot(a, b, out)``: Numba links SciPy's OpenBLAS, a different library from NumPy's,
which a later ``threadpool_limits`` call does not reliably reach; that is why workers pin
``OPENBLAS_NUM_THREADS`` in their environment before import (see
:mod:`fastdist.engine.threads`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastdist.models.kernels.numba_dense import dense_backward, dense_forward, dense_offsets
from fastdist.models.kernels.numba_loss import softmax_cross_entropy

__all__ = ["NumbaKernel"]


@njit(cache=True, nogil=True)
def _loss_and_grad(params, sizes, offs, x, y, grad, acts, delta_a, delta_b):
    logits = dense_forward(params, sizes, offs, x, acts)
    loss, correct = softmax_cross_entropy(logits, y, delta_a)
    dense_backward(params, sizes, offs, x, acts, grad, delta_a, delta_b, False)
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
        weights, biases = zip(*mlp.offsets)
        self._offs = dense_offsets(weights, biases, mlp.sizes, self.max_batch)
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
            params, self._sizes, self._offs, x, y, grad_out,
            self._acts, self._delta_a, self._delta_b,
        )  # fmt: skip
        return float(loss), int(correct)

    def logits(self, params: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
        """Logits of ``x`` into ``out``, in chunks of at most ``max_batch`` rows."""
        for lo in range(0, x.shape[0], self.max_batch):
            hi = min(lo + self.max_batch, x.shape[0])
            out[lo:hi] = dense_forward(params, self._sizes, self._offs, x[lo:hi], self._acts)
