"""The reference backend of every model: the Kernel protocol over the model's own
plain-NumPy oracle (:meth:`~fastdist.models.base.Model.reference_loss_and_grad` and
:meth:`~fastdist.models.base.Model.reference_logits`), so any model that has a reference
can train and evaluate with ``backend=reference``."""

from __future__ import annotations

import numpy as np

__all__ = ["ReferenceKernel"]


class ReferenceKernel:
    """The reference behind the same interface as the compiled kernels. It allocates on
    every call: it is the oracle, not a fast path."""

    name = "reference"

    def __init__(self, model, max_batch: int) -> None:
        self.model = model
        self.max_batch = max_batch

    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, grad_out: np.ndarray
    ) -> tuple[float, int]:
        loss, grad, correct = self.model.reference_loss_and_grad(params, x, y)
        grad_out[:] = grad
        return loss, correct

    def logits(self, params: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
        out[:] = self.model.reference_logits(params, x)
