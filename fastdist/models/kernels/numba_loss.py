"""The softmax cross-entropy every Numba model kernel ends its forward pass with."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["softmax_cross_entropy"]


@njit(cache=True, nogil=True)
def softmax_cross_entropy(logits, y, out):
    """Mean loss and #correct of ``logits`` (batch, classes) against labels ``y``; writes
    d(mean loss)/d(logits) = (softmax - onehot) / batch, (batch, classes) row-major, to
    the start of the flat buffer ``out`` (no separate probability buffer): where the
    dense layers' backward pass reads it (:mod:`numba_dense`)."""
    batch, n_classes = logits.shape
    delta = out[: batch * n_classes].reshape((batch, n_classes))
    loss = 0.0
    correct = 0
    for i in range(batch):
        best = 0
        top = logits[i, 0]
        for j in range(1, n_classes):
            if logits[i, j] > top:
                top = logits[i, j]
                best = j
        if best == y[i]:
            correct += 1
        total = 0.0
        for j in range(n_classes):
            e = np.exp(logits[i, j] - top)
            delta[i, j] = e
            total += e
        loss += np.log(total) - (logits[i, y[i]] - top)
        inv = 1.0 / (total * batch)
        for j in range(n_classes):
            delta[i, j] *= inv
        delta[i, y[i]] -= 1.0 / batch
    if batch > 0:
        loss /= batch
    return loss, correct
