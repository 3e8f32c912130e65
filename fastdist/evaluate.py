"""Test-set evaluation of a combined model (one member, or an output ensemble)."""

from __future__ import annotations

import numpy as np

from fastdist.combiners.base import CombinedModel
from fastdist.model import ParamLayout

__all__ = ["predict_proba", "evaluate"]

_CHUNK = 1024


def _softmax_inplace(z: np.ndarray) -> np.ndarray:
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def predict_proba(model: CombinedModel, layout: ParamLayout, x: np.ndarray) -> np.ndarray:
    """The combined predictive distribution, float64, shape (n, classes): the weighted
    mean of the members' softmax outputs, or the softmax of their weighted mean logits."""
    from fastdist.kernels.numba_mlp import NumbaKernel

    kernel = NumbaKernel(layout, min(_CHUNK, max(1, x.shape[0])))
    probs = np.zeros((x.shape[0], layout.n_classes), dtype=np.float64)
    logits = np.empty((x.shape[0], layout.n_classes), dtype=np.float32)
    for member, weight in zip(model.members, model.weights):
        kernel.predict_logits(np.ascontiguousarray(member, dtype=np.float32), x, logits)
        if model.average == "logits":
            probs += weight * logits
        else:
            probs += weight * _softmax_inplace(logits.astype(np.float64))
    return _softmax_inplace(probs) if model.average == "logits" else probs


def evaluate(model: CombinedModel, layout: ParamLayout, x: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy and mean cross-entropy of the combined predictor."""
    probs = predict_proba(model, layout, x)
    picked = probs[np.arange(len(y)), y]
    return {
        "accuracy": float((probs.argmax(axis=1) == y).mean()),
        "loss": float(-np.log(np.maximum(picked, 1e-12)).mean()),
    }
