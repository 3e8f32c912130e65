"""Plain-NumPy MLP forward/backward: readable, allocating, and the test oracle.

Written for any float dtype: the Fisher combiner runs the same code in float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ReferenceKernel", "hidden_outputs", "forward_logits", "loss_and_grad", "log_softmax"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def hidden_outputs(mlp, params: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """The input of every layer, then the logits."""
    hidden = [x]
    h = x
    for layer in range(mlp.n_layers):
        h = h @ mlp.weight(params, layer) + mlp.bias(params, layer)
        if layer < mlp.n_layers - 1:
            h = np.maximum(h, 0.0)
        hidden.append(h)
    return hidden


def forward_logits(mlp, params: np.ndarray, x: np.ndarray) -> np.ndarray:
    return hidden_outputs(mlp, params, x)[-1]


def loss_and_grad(mlp, params: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Mean softmax cross-entropy, its gradient w.r.t. the flat params, and #correct."""
    batch = x.shape[0]
    hidden = hidden_outputs(mlp, params, x)
    logp = log_softmax(hidden[-1].astype(np.float64))
    rows = np.arange(batch)
    loss = float(-logp[rows, y].mean()) if batch else 0.0
    correct = int((hidden[-1].argmax(axis=1) == y).sum()) if batch else 0

    grad = np.zeros_like(params)
    delta = np.exp(logp)
    delta[rows, y] -= 1.0
    delta = (delta / max(batch, 1)).astype(params.dtype)
    for layer in reversed(range(mlp.n_layers)):
        mlp.weight(grad, layer)[:] = hidden[layer].T @ delta
        mlp.bias(grad, layer)[:] = delta.sum(axis=0)
        if layer > 0:
            delta = (delta @ mlp.weight(params, layer).T) * (hidden[layer] > 0)
    return loss, grad, correct


class ReferenceKernel:
    """The reference behind the same interface as the compiled kernels."""

    name = "reference"

    def __init__(self, mlp, max_batch: int) -> None:
        self.model = mlp
        self.max_batch = max_batch

    def loss_and_grad(self, params, x, y, grad_out) -> tuple[float, int]:
        loss, grad, correct = loss_and_grad(self.model, params, x, y)
        grad_out[:] = grad
        return loss, correct

    def logits(self, params, x, out) -> None:
        out[:] = forward_logits(self.model, params, x)
