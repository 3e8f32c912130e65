"""The ReLU multilayer perceptron: ``model=mlp``.

Layer ``l`` maps ``sizes[l]`` inputs to ``sizes[l + 1]`` outputs. Its weight ``w{l}``
has shape ``(sizes[l], sizes[l + 1])`` (row-major, so ``x @ w``) and is followed by its
bias ``b{l}`` in the flat vector. Hidden layers use ReLU; the last layer gives logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fastdist.errors import ConfigError
from fastdist.models.base import FlatLayout, Model, PermutationSpec, kernel_from

__all__ = ["MLP", "mlp"]


@dataclass(frozen=True)
class MLP(Model):
    sizes: tuple[int, ...]

    name = "mlp"

    def __post_init__(self) -> None:
        sizes = tuple(int(s) for s in self.sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"an MLP needs at least an input and an output size >= 1, got {sizes}")
        object.__setattr__(self, "sizes", sizes)

    # The flat layout -----------------------------------------------------------------

    @cached_property
    def layout(self) -> FlatLayout:
        shapes = []
        for layer, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            shapes += [(f"w{layer}", (fan_in, fan_out)), (f"b{layer}", (fan_out,))]
        return FlatLayout(tuple(shapes))

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def n_inputs(self) -> int:
        return self.sizes[0]

    @property
    def n_classes(self) -> int:
        return self.sizes[-1]

    @property
    def size(self) -> int:
        return self.layout.size

    @property
    def offsets(self) -> tuple[tuple[int, int], ...]:
        """(weight offset, bias offset) of every layer (static slices for JAX)."""
        return tuple(
            (self.layout.bounds(f"w{k}")[0], self.layout.bounds(f"b{k}")[0])
            for k in range(self.n_layers)
        )

    def weight(self, flat: np.ndarray, layer: int) -> np.ndarray:
        """A (fan_in, fan_out) view of layer ``layer``'s weights inside ``flat``."""
        return self.layout.view(flat, f"w{layer}")

    def bias(self, flat: np.ndarray, layer: int) -> np.ndarray:
        return self.layout.view(flat, f"b{layer}")

    # The record ----------------------------------------------------------------------

    def init(self, seed: int, out: np.ndarray | None = None) -> np.ndarray:
        """He-uniform weights (ReLU fan-in scaling) and zero biases, float32."""
        flat = np.zeros(self.size, dtype=np.float32) if out is None else out
        flat[:] = 0.0
        rng = np.random.default_rng(seed)
        for layer in range(self.n_layers):
            bound = np.sqrt(6.0 / self.sizes[layer])
            w = self.weight(flat, layer)
            w[:] = rng.uniform(-bound, bound, size=w.shape).astype(np.float32)
        return flat

    # Kernels per backend, imported only in the process that asks (a Numba worker never
    # imports JAX).
    _KERNELS = {
        "numba": "fastdist.models.kernels.numba_mlp:NumbaKernel",
        "jax": "fastdist.models.kernels.jax_mlp:JaxKernel",
        "reference": "fastdist.models.kernels.reference_kernel:ReferenceKernel",
    }

    def kernel(self, backend: str, max_batch: int):
        return kernel_from(self, backend, max_batch, self._KERNELS)

    def reference_loss_and_grad(self, params, x, y):
        from fastdist.models.kernels.reference_mlp import loss_and_grad

        return loss_and_grad(self, params, x, y)

    def reference_logits(self, params, x):
        from fastdist.models.kernels.reference_mlp import forward_logits

        return forward_logits(self, params, x)

    def describe(self) -> list[int]:
        return list(self.sizes)

    def flops_per_sample(self) -> int:
        """Forward + backward multiply-adds x2: the usual 6 x weights FLOP per sample."""
        return 6 * sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    def permutation_spec(self) -> PermutationSpec:
        """Hidden unit ``j + 1`` orders the columns of ``w{j}``, the entries of ``b{j}``
        and the rows of ``w{j+1}``."""
        return PermutationSpec(
            tuple(
                (f"h{j + 1}", ((f"w{j}", 1), (f"b{j}", 0), (f"w{j + 1}", 0)))
                for j in range(self.n_layers - 1)
            )
        )

    def unit_activations(self, params, x):
        """Hidden unit ``j + 1``'s post-ReLU outputs, one row per input row."""
        outputs = self.per_example_forward(
            np.asarray(params, np.float64), np.asarray(x, np.float64)
        )
        layers = outputs[1]  # inputs, hidden..., logits
        return {f"h{j + 1}": layers[j + 1] for j in range(self.n_layers - 1)}

    def per_example_forward(self, params, x):
        from fastdist.models.kernels.reference_mlp import hidden_outputs

        hidden = hidden_outputs(self, params, x)
        return hidden[-1], hidden

    def add_squared_grads(self, params, cache, dlogits, weights, out) -> None:
        delta = dlogits
        for layer in reversed(range(self.n_layers)):
            h = cache[layer]
            d2 = delta * delta
            self.weight(out, layer)[:] += (h * h * weights[:, None]).T @ d2
            self.bias(out, layer)[:] += weights @ d2
            if layer > 0:
                delta = (delta @ self.weight(params, layer).T) * (h > 0)


def mlp(hidden: list[int] = (64,), *, input_shape: tuple[int, ...], n_classes: int) -> MLP:
    """``model=mlp``: ReLU hidden layers of widths ``hidden`` (``model.hidden=[256,256]``);
    input and output sizes come from the dataset."""
    try:
        widths = [int(h) for h in hidden]
    except (TypeError, ValueError):
        raise ConfigError(f"model.hidden must be a list of sizes, got {hidden!r}") from None
    if any(h < 1 for h in widths):
        raise ConfigError(f"model.hidden sizes must be >= 1, got {widths}")
    return MLP((int(np.prod(input_shape)), *widths, int(n_classes)))
