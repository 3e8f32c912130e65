"""The MLP specification and its flat parameter layout.

Every backend, optimizer and combiner works on ONE contiguous float32 vector; the
layout maps names (``w0``, ``b0``, ``w1``, ...) to slices of it. Averaging, allreduce
and zero-copy sharing all reduce to operations on that vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ParamLayout", "init_params"]


@dataclass(frozen=True)
class ParamLayout:
    """Where each layer's weights and biases live in the flat parameter vector.

    Layer ``l`` maps ``sizes[l]`` inputs to ``sizes[l + 1]`` outputs. Its weight ``w{l}``
    has shape ``(sizes[l], sizes[l + 1])`` (row-major, so ``x @ w``) and is followed by
    its bias ``b{l}``. Hidden layers use ReLU; the last layer produces logits.
    """

    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        sizes = tuple(int(s) for s in self.sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"an MLP needs at least an input and an output size >= 1, got {sizes}")
        object.__setattr__(self, "sizes", sizes)

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
    def offsets(self) -> tuple[tuple[int, int], ...]:
        """(weight offset, bias offset) of every layer."""
        out, pos = [], 0
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            out.append((pos, pos + fan_in * fan_out))
            pos += fan_in * fan_out + fan_out
        return tuple(out)

    @property
    def size(self) -> int:
        return sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{kind}{layer}" for layer in range(self.n_layers) for kind in ("w", "b"))

    def weight(self, flat: np.ndarray, layer: int) -> np.ndarray:
        """A (fan_in, fan_out) view of layer ``layer``'s weights inside ``flat``."""
        start = self.offsets[layer][0]
        fan_in, fan_out = self.sizes[layer], self.sizes[layer + 1]
        return flat[start : start + fan_in * fan_out].reshape(fan_in, fan_out)

    def bias(self, flat: np.ndarray, layer: int) -> np.ndarray:
        """A view of layer ``layer``'s bias inside ``flat``."""
        start = self.offsets[layer][1]
        return flat[start : start + self.sizes[layer + 1]]

    def view(self, flat: np.ndarray, name: str) -> np.ndarray:
        """The named tensor (``w0``, ``b0``, ...) as a view of ``flat``."""
        kind, layer = name[0], int(name[1:])
        if kind == "w":
            return self.weight(flat, layer)
        if kind == "b":
            return self.bias(flat, layer)
        raise KeyError(name)

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {name: self.view(flat, name) for name in self.names}

    def flops_per_sample(self) -> int:
        """Forward + backward multiply-adds x2: the usual 6 * weights FLOP per sample."""
        return 6 * sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:]))


def init_params(layout: ParamLayout, seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """He-uniform weights (ReLU fan-in scaling) and zero biases, float32, reproducible."""
    flat = np.zeros(layout.size, dtype=np.float32) if out is None else out
    flat[:] = 0.0
    rng = np.random.default_rng(seed)
    for layer in range(layout.n_layers):
        fan_in = layout.sizes[layer]
        bound = np.sqrt(6.0 / fan_in)
        w = layout.weight(flat, layer)
        w[:] = rng.uniform(-bound, bound, size=w.shape).astype(np.float32)
    return flat
