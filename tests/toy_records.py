"""A model, an optimizer and two combiners (one that syncs during training) that are
NOT part of fastdist, plugged in through the documented extension points only
(docs/design.md quotes this file): a factory in an importable module, and a YAML naming
it in a config directory on Hydra's search path (tests/extensions/conf). Spawned
workers import this module by name."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs
from fastdist.combiners.exchange import Exchange, Sync, WorkerExchange, no_exchange
from fastdist.models.base import FlatLayout, Model
from fastdist.optim.base import Optimizer


# --- a model: multinomial logistic regression -----------------------------------------
class SoftmaxKernel:
    """One kernel serves every backend: plain NumPy, writing into grad_out."""

    name = "numpy"

    def __init__(self, model: LinearSoftmax) -> None:
        self.model = model

    def loss_and_grad(self, params, x, y, grad_out):
        loss, grad, correct = self.model.reference_loss_and_grad(params, x, y)
        grad_out[:] = grad
        return loss, correct

    def logits(self, params, x, out):
        out[:] = self.model.reference_logits(params, x)


@dataclass(frozen=True)
class LinearSoftmax(Model):
    features: int
    classes: int

    name = "linear_softmax"

    @property
    def layout(self) -> FlatLayout:
        return FlatLayout((("w", (self.features, self.classes)), ("b", (self.classes,))))

    @property
    def n_inputs(self) -> int:
        return self.features

    @property
    def n_classes(self) -> int:
        return self.classes

    def init(self, seed, out=None):
        flat = np.zeros(self.layout.size, np.float32) if out is None else out
        flat[:] = 0.0
        w = self.layout.view(flat, "w")
        w[:] = np.random.default_rng(seed).normal(0, 0.01, w.shape)
        return flat

    def kernel(self, backend, max_batch):
        return SoftmaxKernel(self)

    def reference_logits(self, params, x):
        return x @ self.layout.view(params, "w") + self.layout.view(params, "b")

    def reference_loss_and_grad(self, params, x, y):
        z = self.reference_logits(params, x).astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        rows = np.arange(len(y))
        loss = float(-np.log(p[rows, y]).mean())
        p[rows, y] -= 1.0
        p /= len(y)
        grad = np.concatenate([(x.T @ p).ravel(), p.sum(axis=0)]).astype(np.float32)
        return loss, grad, int((z.argmax(axis=1) == y).sum())


def linear_softmax(*, input_shape, n_classes) -> LinearSoftmax:
    return LinearSoftmax(int(np.prod(input_shape)), int(n_classes))


# --- an optimizer: sign SGD ------------------------------------------------------------
@dataclass(frozen=True)
class SignSGD(Optimizer):
    lr: float = 0.01
    clip_norm: float | None = None  # a positive scale cannot change a sign: unused

    name = "sign_sgd"
    state_names = ()  # no state rows in the arena

    def update(self, params, state, grad, lo, hi, step, lr=None, grad_scale=1.0):
        params[lo:hi] -= self.rate(lr) * np.sign(grad[lo:hi])

    def update_from_mean(self, params, state, grads, lo, hi, step, lr=None, grad_scale=1.0):
        mean = grads[:, lo:hi].mean(axis=0)  # this worker's slice of the averaged gradient
        params[lo:hi] -= self.rate(lr) * np.sign(mean)


def sign_sgd(lr: float = 0.01) -> SignSGD:
    return SignSGD(float(lr))


# --- a combiner: coordinate-wise median of independently trained workers --------------
def coordinate_median(init: str = "shared") -> Combiner:
    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        median = np.median(inputs.worker_params, axis=0).astype(np.float32)
        return CombinedModel((median,), info={"rule": "median"})

    return Combiner("coordinate_median", no_exchange(), finalize, init=init)


# --- a combiner that syncs: the coordinate-wise median of the gradients, every step ----
@dataclass(frozen=True)
class MedianOfGradients(Exchange):
    kind: Sync = Sync.GRADIENTS
    shares_parameters: bool = True  # one parameter vector, one optimizer state
    shares_state: bool = True

    def sync_at(self, step: int, total_steps: int) -> bool:
        return True

    def arrays(self, workers: int, size: int, n_state: int) -> dict:
        return {"median": ((size,), np.float32)}

    def published(self, arena) -> list[np.ndarray]:
        return [arena["grads"]]  # one row per worker: gathered across nodes under MPI

    def vectors_per_sync(self, n_state: int) -> int:
        return 1

    def worker(self, view) -> WorkerExchange:
        return MedianWorker(view)


class MedianWorker(WorkerExchange):
    def local_step(self, step: int, lr: float) -> None:
        pass  # the update comes from the median, at the sync

    def sync(self, step: int, lr: float) -> None:
        v, lo, hi = self.view, self.view.lo, self.view.hi
        v.meet()  # every worker's gradient row is written
        median = v.arena["median"]
        np.median(v.grads[:, lo:hi], axis=0, out=median[lo:hi])  # my slice only
        v.optimizer.update(v.params, v.state, median, lo, hi, step, lr=lr)
        v.barrier.wait()  # the whole vector is updated before the next step


def _shared_row(inputs: FinalizeInputs) -> CombinedModel:
    return CombinedModel((inputs.worker_params[0].copy(),))


def median_grad(init: str = "shared") -> Combiner:
    return Combiner("median_grad", MedianOfGradients(), _shared_row, init=init)
