"""Predictions and test-set scores of a combined model (one member, or an ensemble)."""

from __future__ import annotations

import threading

import numpy as np

from fastdist.combiners.base import CombinedModel
from fastdist.models.base import Model

__all__ = ["predict_proba", "evaluate", "host_kernel", "preload_host_kernel"]

_CHUNK = 1024

# Kernels of the host backend, per (model record, batch): a sweep's jobs, and the
# dozens of evaluations of one run's diagnostics, reuse one workspace each.
_kernels: dict = {}
_kernels_lock = threading.Lock()
_KEEP_KERNELS = 8


def host_kernel(model: Model, rows: int):
    """The model's host-backend kernel for ``rows``-row chunks (built once, kept)."""
    batch = min(_CHUNK, max(1, rows))
    try:
        key = (model, model.host_backend, batch)
        hash(key)
    except TypeError:  # a model record that is not hashable: no reuse
        return model.kernel(model.host_backend, batch)
    with _kernels_lock:
        kernel = _kernels.get(key)
        if kernel is None:
            if len(_kernels) >= _KEEP_KERNELS:
                _kernels.pop(next(iter(_kernels)))
            kernel = _kernels[key] = model.kernel(model.host_backend, batch)
    return kernel


def preload_host_kernel(model: Model) -> threading.Thread:
    """Load the host kernel's compiled code in a background thread (while the workers
    start, the coordinator has nothing else to do); evaluation then finds it loaded.
    Failures are left for the evaluation itself to report."""

    def load() -> None:
        try:
            kernel = model.kernel(model.host_backend, 1)  # a scratch one: not shared
            x = np.zeros((1, model.n_inputs), dtype=np.float32)
            out = np.empty((1, model.n_classes), dtype=np.float32)
            kernel.logits(np.zeros(model.layout.size, dtype=np.float32), x, out)
        except Exception:
            pass

    thread = threading.Thread(target=load, name="fastdist-kernel-preload", daemon=True)
    thread.start()
    return thread


def _softmax_inplace(z: np.ndarray) -> np.ndarray:
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def predict_proba(combined: CombinedModel, model: Model, x: np.ndarray) -> np.ndarray:
    """The combined predictive distribution, float64, shape (n, classes): the weighted
    mean of the members' softmax outputs, or the softmax of their weighted mean logits.
    Computed with the model's host backend (Numba for the built-in models)."""
    kernel = host_kernel(model, x.shape[0])
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
