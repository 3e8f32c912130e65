"""Plain-NumPy MLP forward/backward: readable, allocating, and the test oracle."""

from __future__ import annotations

import numpy as np

from fastdist.model import ParamLayout

__all__ = ["ReferenceKernel", "forward_logits", "loss_and_grad", "log_softmax"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def forward_logits(layout: ParamLayout, params: np.ndarray, x: np.ndarray) -> np.ndarray:
    h = x
    for layer in range(layout.n_layers):
        h = h @ layout.weight(params, layer) + layout.bias(params, layer)
        if layer < layout.n_layers - 1:
            h = np.maximum(h, 0.0)
    return h


def loss_and_grad(
    layout: ParamLayout, params: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray, int]:
    """Mean softmax cross-entropy, its gradient w.r.t. the flat params, and #correct."""
    batch = x.shape[0]
    hidden = [x]
    h = x
    for layer in range(layout.n_layers):
        h = h @ layout.weight(params, layer) + layout.bias(params, layer)
        if layer < layout.n_layers - 1:
            h = np.maximum(h, 0.0)
        hidden.append(h)
    logp = log_softmax(hidden[-1].astype(np.float64))
    rows = np.arange(batch)
    loss = float(-logp[rows, y].mean()) if batch else 0.0
    correct = int((hidden[-1].argmax(axis=1) == y).sum()) if batch else 0

    grad = np.zeros_like(params)
    delta = np.exp(logp)
    delta[rows, y] -= 1.0
    delta = (delta / max(batch, 1)).astype(params.dtype)
    for layer in reversed(range(layout.n_layers)):
        layout.weight(grad, layer)[:] = hidden[layer].T @ delta
        layout.bias(grad, layer)[:] = delta.sum(axis=0)
        if layer > 0:
            delta = (delta @ layout.weight(params, layer).T) * (hidden[layer] > 0)
    return loss, grad, correct


class ReferenceKernel:
    """The reference behind the same interface as the compiled kernels."""

    name = "reference"

    def __init__(self, layout: ParamLayout, max_batch: int) -> None:
        self.layout = layout
        self.max_batch = max_batch

    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, grad_out: np.ndarray
    ) -> tuple[float, int]:
        loss, grad, correct = loss_and_grad(self.layout, params, x, y)
        grad_out[:] = grad
        return loss, correct

    def predict_logits(self, params: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
        out[:] = forward_logits(self.layout, params, x)
