"""Plain-NumPy MLP forward/backward: readable, allocating, and the test oracle.

Written for any float dtype: the Fisher combiner runs the same code in float64. The
``reference`` backend is :class:`~fastdist.models.kernels.reference_kernel.ReferenceKernel`
over these functions.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "dense_outputs",
    "forward_logits",
    "hidden_outputs",
    "log_softmax",
    "loss_and_grad",
    "softmax_cross_entropy",
]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(
    logits: np.ndarray, y: np.ndarray, dtype
) -> tuple[float, int, np.ndarray]:
    """(mean loss, #correct, d(mean loss)/d(logits) as ``dtype``) of ``logits`` against
    labels ``y``; the softmax in float64. The CNN's reference ends with it too."""
    batch = logits.shape[0]
    logp = log_softmax(logits.astype(np.float64))
    rows = np.arange(batch)
    loss = float(-logp[rows, y].mean()) if batch else 0.0
    correct = int((logits.argmax(axis=1) == y).sum()) if batch else 0
    dlogits = np.exp(logp)
    dlogits[rows, y] -= 1.0
    return loss, correct, (dlogits / max(batch, 1)).astype(dtype)


def dense_outputs(h: np.ndarray, layers) -> list[np.ndarray]:
    """``h`` through the dense ``layers`` ((weight, bias) pairs, ReLU after all but the
    last): the input of every layer, then the logits. The CNN's dense layers are these."""
    outputs = [h]
    for j, (weight, bias) in enumerate(layers):
        h = h @ weight + bias
        if j < len(layers) - 1:
            h = np.maximum(h, 0.0)
        outputs.append(h)
    return outputs


def hidden_outputs(mlp, params: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """The input of every layer, then the logits."""
    layers = [(mlp.weight(params, j), mlp.bias(params, j)) for j in range(mlp.n_layers)]
    return dense_outputs(x, layers)


def forward_logits(mlp, params: np.ndarray, x: np.ndarray) -> np.ndarray:
    return hidden_outputs(mlp, params, x)[-1]


def loss_and_grad(mlp, params: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Mean softmax cross-entropy, its gradient w.r.t. the flat params, and #correct."""
    hidden = hidden_outputs(mlp, params, x)
    loss, correct, delta = softmax_cross_entropy(hidden[-1], y, params.dtype)
    grad = np.zeros_like(params)
    for layer in reversed(range(mlp.n_layers)):
        mlp.weight(grad, layer)[:] = hidden[layer].T @ delta
        mlp.bias(grad, layer)[:] = delta.sum(axis=0)
        if layer > 0:
            delta = (delta @ mlp.weight(params, layer).T) * (hidden[layer] > 0)
    return loss, grad, correct
