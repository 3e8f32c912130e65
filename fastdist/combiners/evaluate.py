"""Predictions and test-set scores of a combined model (one member, or an ensemble)."""

from __future__ import annotations

import numpy as np

from fastdist.combiners.base import CombinedModel
from fastdist.models.base import Model

__all__ = ["predict_proba", "evaluate"]

_CHUNK = 1024


def _softmax_inplace(z: np.ndarray) -> np.ndarray:
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def predict_proba(combined: CombinedModel, model: Model, x: np.ndarray) -> np.ndarray:
    """The combined predictive distribution, float64, shape (n, classes): the weighted
    mean of the members' softmax outputs, or the softmax of their weighted mean logits.
    Computed with the model's host backend (Numba for the built-in models)."""
    kernel = model.kernel(model.host_backend, min(_CHUNK, max(1, x.shape[0])))
    probs = np.zeros((x.shape[0], model.n_classes), dtype=np.float64)
    logits = np.empty((x.shape[0], model.n_classes), dtype=np.float32)
    for member, weight in zip(combined.members, combined.weights):
        kernel.logits(np.ascontiguousarray(member, dtype=np.float32), x, logits)
        if combined.average == "logits":
            probs += weight * logits
        else:
            probs += weight * _softmax_inplace(logits.astype(np.float64))
    return _softmax_inplace(probs) if combined.average == "logits" else probs


def evaluate(combined: CombinedModel, model: Model, x: np.ndarray, y: np.ndarray) -> dict:
    """Accuracy and mean cross-entropy of the combined predictor."""
    probs = predict_proba(combined, model, x)
    picked = probs[np.arange(len(y)), y]
    return {
        "accuracy": float((probs.argmax(axis=1) == y).mean()),
        "loss": float(-np.log(np.maximum(picked, 1e-12)).mean()),
    }
