"""Numba CNN forward/backward: one compiled call per step, into buffers allocated once.

Convolutions are im2col + BLAS GEMM, channels-last: the rows of ``cols`` are ``(kh, kw,
cin)`` patches, so ``cols @ W`` (W: ``(patch, cout)``, the layout's HWIO weights) is the
layer's output in NHWC, and the next layer's im2col copies runs of ``cin`` contiguous
floats. The batch is walked in chunks of samples whose columns fit in L2 (about 512
KiB): a whole batch's columns (42 MB for W3's second conv) would go to DRAM and back.
Backward, per chunk: im2col again, ``dW += cols.T @ dZ`` (backward-weights), ``dcols =
dZ @ W.T`` then col2im (backward-data; skipped for the first layer). 3x3, stride-1,
unpadded layers after the first with an even output (W3's second conv) run forward and
backward-data through Winograd F(2x2, 3x3) instead, and backward-weights through its
adjoint F(3x3, 2x2) (:mod:`numba_winograd`; 2.25x fewer flops; no im2col, no col2im). Max-pool keeps
each window's argmax for its backward. The dense layers are the MLP's
(:mod:`numba_dense`), and so is the softmax cross-entropy (:mod:`numba_loss`).

Every layer's geometry is a row of the int64 array ``geom`` (columns
:data:`~fastdist.models.kernels.numba_im2col.GEOM`), and every buffer offset is
precomputed for ``max_batch`` rows, so the whole network is walked inside one compiled
function.

This module holds the kernel object the model hands out; the compiled pieces have a
module each: :mod:`numba_im2col` (im2col, col2im), :mod:`numba_maxpool`,
:mod:`numba_cnn_forward`, :mod:`numba_cnn_backward` (the training step),
:mod:`numba_winograd` and
:mod:`numba_cnn_workspace` (the buffers and their offsets).
"""

from __future__ import annotations

import numpy as np

from fastdist.models.kernels.numba_cnn_backward import cnn_loss_and_grad
from fastdist.models.kernels.numba_cnn_forward import cnn_forward
from fastdist.models.kernels.numba_cnn_workspace import workspace

__all__ = ["NumbaCNNKernel"]


class NumbaCNNKernel:
    """Compiled loss/gradient and prediction for one :class:`~fastdist.models.cnn_record.CNN`.

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
        """The buffers of :func:`workspace` for up to ``rows`` rows, allocated once per size."""
        if rows not in self._workspaces:
            self._workspaces[rows] = workspace(self.model, rows)
        return self._workspaces[rows]

    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, grad_out: np.ndarray
    ) -> tuple[float, int]:
        """Write d(mean loss)/d(params) into ``grad_out``; return (mean loss, #correct)."""
        if x.shape[0] > self.max_batch:
            raise ValueError(f"batch of {x.shape[0]} exceeds the workspace ({self.max_batch})")
        if x.shape[0] == 0:
            grad_out[:] = 0.0
            return 0.0, 0
        offs, dense_offs, cols, z, p, arg, acts, dcols, part, da, db, wino = self._workspace(
            self.max_batch
        )
        loss, correct = cnn_loss_and_grad(
            params, self._geom, self._dense, offs, dense_offs, np.ascontiguousarray(x), y,
            grad_out, cols, z, p, arg, acts, dcols, part, da, db, wino,
        )  # fmt: skip
        return float(loss), int(correct)

    def logits(self, params: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
        """Logits of ``x`` into ``out``, in chunks."""
        chunk = min(self.max_batch, self._PREDICT_CHUNK)
        offs, dense_offs, cols, z, p, arg, acts, _, _, _, _, wino = self._workspace(chunk)
        for lo in range(0, x.shape[0], chunk):
            hi = min(lo + chunk, x.shape[0])
            xs = np.ascontiguousarray(x[lo:hi], dtype=np.float32)
            out[lo:hi] = cnn_forward(
                params, self._geom, self._dense, offs, dense_offs, xs, hi - lo,
                cols, z, p, arg, acts, wino,
            )  # fmt: skip
