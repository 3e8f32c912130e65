"""What every model record provides, and the generic flat-vector layout.

A model's parameters are ONE contiguous float32 vector. :class:`FlatLayout` maps each
named tensor to its shape and slice of that vector; kernels, optimizers, combiners and
the shared arena only ever see the vector, so they work for any architecture.

A model record is a small frozen, picklable object (it travels to the workers inside
their job description) built by the factory that ``conf/model/<name>.yaml`` names in
``_target_``. It owns its layout, its initialisation, a kernel per backend, a NumPy
reference (the test oracle), and the optional facts combiners may ask of an
architecture: which axes may be permuted (alignment) and per-example gradients
(Fisher). A record that lacks one makes that combiner refuse it in one line.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["FlatLayout", "Kernel", "Model", "PermutationSpec", "BACKENDS", "kernel_from"]

# The backends a kernel may be asked for; a model may implement any subset.
BACKENDS = ("numba", "jax", "reference")


@dataclass(frozen=True)
class FlatLayout:
    """Named tensors packed one after another, in order, into one float32 vector."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    def __post_init__(self) -> None:
        shapes = tuple((str(name), tuple(int(d) for d in shape)) for name, shape in self.shapes)
        names = [name for name, _ in shapes]
        if len(set(names)) != len(names):
            raise ValueError(f"tensor names must be unique, got {names}")
        if any(d < 0 for _, shape in shapes for d in shape):
            raise ValueError(f"tensor shapes must be non-negative, got {shapes}")
        object.__setattr__(self, "shapes", shapes)
        bounds, pos = {}, 0
        for name, shape in shapes:
            count = int(np.prod(shape, dtype=np.int64))
            bounds[name] = (pos, pos + count)
            pos += count
        object.__setattr__(self, "_bounds", bounds)
        object.__setattr__(self, "_size", pos)

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return self._size

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return dict(self.shapes)[name]

    def bounds(self, name: str) -> tuple[int, int]:
        """``[start, stop)`` of the named tensor in the flat vector."""
        return self._bounds[name]

    def view(self, flat: np.ndarray, name: str) -> np.ndarray:
        """The named tensor as a view of ``flat`` (writes go to the vector)."""
        start, stop = self._bounds[name]
        return flat[start:stop].reshape(self.shape(name))

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {name: self.view(flat, name) for name in self.names}


@dataclass(frozen=True)
class PermutationSpec:
    """Hidden units (or channels) that may be reordered without changing the function.

    ``perms`` maps each permutation's name to the ``(tensor name, axis)`` pairs it
    reorders, in a fixed order (alignment visits them in that order's random shuffles);
    the first pair's axis length is the permutation's size. Git Re-Basin's
    "permutation spec" (Ainsworth et al. 2022), on the flat layout.
    """

    perms: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.perms)

    def axes(self, perm: str) -> tuple[tuple[str, int], ...]:
        return dict(self.perms)[perm]

    def of_tensor(self, tensor: str) -> dict[int, str]:
        """axis -> permutation name, for every permuted axis of ``tensor``."""
        return {axis: p for p, pairs in self.perms for t, axis in pairs if t == tensor}


def kernel_from(model, backend: str, max_batch: int, table: dict[str, str]):
    """``table[backend]`` (``"module:Class"``) imported now, in the calling process, and
    built for ``model``; an unsupported backend is a ConfigError naming the model."""
    from fastdist.conf import resolve
    from fastdist.errors import ConfigError

    if backend not in table:
        raise ConfigError(f"model {model.name} has no kernel for backend {backend!r}")
    return resolve(table[backend], f"model {model.name}'s {backend} kernel")(model, max_batch)


class Kernel(Protocol):
    """A model's compiled loss/gradient and prediction for one backend.

    ``loss_and_grad`` writes d(mean loss)/d(params) into ``grad_out`` in place and
    returns (mean softmax cross-entropy, number of correct argmax predictions);
    ``logits`` fills ``out`` (n, classes). Workspaces are sized for ``max_batch`` rows
    once: the training loop allocates nothing per step.
    """

    name: str

    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, grad_out: np.ndarray
    ) -> tuple[float, int]: ...

    def logits(self, params: np.ndarray, x: np.ndarray, out: np.ndarray) -> None: ...


class Model(abc.ABC):
    """The record of one architecture. Subclasses are frozen dataclasses (picklable)."""

    name: str = "model"
    # The backend the coordinator evaluates with (it never imports JAX for that).
    host_backend: str = "numba"

    @property
    @abc.abstractmethod
    def layout(self) -> FlatLayout:
        """Named shapes of the parameters, packed into the flat vector."""

    @property
    @abc.abstractmethod
    def n_classes(self) -> int: ...

    @property
    @abc.abstractmethod
    def n_inputs(self) -> int:
        """Features per sample, as the arena stores them: one row of floats."""

    @abc.abstractmethod
    def init(self, seed: int, out: np.ndarray | None = None) -> np.ndarray:
        """Initial parameters for ``seed``, written into ``out`` (float32, reproducible)."""

    @abc.abstractmethod
    def kernel(self, backend: str, max_batch: int) -> Kernel:
        """The kernel for ``backend``; imports of the backend happen here, in the
        process that calls it. An unsupported backend is a ConfigError."""

    @abc.abstractmethod
    def reference_loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray, int]:
        """Plain-NumPy (mean loss, flat gradient, #correct): the test oracle."""

    @abc.abstractmethod
    def reference_logits(self, params: np.ndarray, x: np.ndarray) -> np.ndarray: ...

    def describe(self) -> Any:
        """A JSON-able summary of the architecture for metrics.json."""
        return self.name

    def flops_per_sample(self) -> int | None:
        """Forward + backward FLOP per training sample, where known (benchmarks)."""
        return None

    # Optional facts for combiners --------------------------------------------------

    def permutation_spec(self) -> PermutationSpec | None:
        """Axes whose order does not change the function (alignment); None if unknown."""
        return None

    def unit_activations(self, params: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray] | None:
        """Per permutation of :meth:`permutation_spec`, its units' outputs on ``x`` as a
        float64 ``(samples, units)`` matrix (activation matching); None if unknown."""
        return None

    def per_example_forward(self, params: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, Any]:
        """(logits, cache) in the dtype of ``params``, for per-example gradients."""
        raise NotImplementedError(f"model {self.name} does not provide per-example gradients")

    def add_squared_grads(
        self,
        params: np.ndarray,
        cache: Any,
        dlogits: np.ndarray,
        weights: np.ndarray,
        out: np.ndarray,
    ) -> None:
        """``out += sum_i weights[i] * g_i ** 2``: ``g_i`` is the gradient of example
        ``i`` of the cached batch whose gradient with respect to its logits is
        ``dlogits[i]`` (the diagonal Fisher's building block)."""
        raise NotImplementedError(f"model {self.name} does not provide per-example gradients")

    @property
    def has_per_example_grads(self) -> bool:
        return type(self).add_squared_grads is not Model.add_squared_grads
