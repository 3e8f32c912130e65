"""The CNN model record (:class:`CNN`): its flat layout, initialisation, kernels per
backend, NumPy reference, and what combiners may ask of it (permutation facts, FLOPs).

Everything is stored 2-D, a 1-D network being a 2-D one of height 1, and channels-last
(NHWC), so that im2col rows are ``(kh, kw, cin)`` patches and one GEMM per layer does a
convolution. The flat layout therefore holds, per layer:

* ``conv{layer}.weight``: ``(kh, kw, cin, cout)`` (HWIO, as JAX/TF), ``(k, cin, cout)`` in 1-D;
* ``conv{layer}.bias``: ``(cout,)``;
* ``dense0.weight``: ``(h, w, c, units)`` (``(length, c, units)`` in 1-D): the flattened
  NHWC features by unit, so the channel axis stays visible to alignment;
* ``dense{j}.weight`` ``(fan_in, fan_out)`` for ``j > 0``, and ``dense{j}.bias``.

Inputs are arena rows; a sample of shape ``(H, W)``/``(L,)`` has one channel, ``(C, H, W)``
or (with ``spatial_dims=1``) ``(C, L)`` is channels-first, as datasets store it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fastdist.models.base import FlatLayout, Model, PermutationSpec, kernel_from
from fastdist.models.conv_layer import ConvLayer

__all__ = ["CNN"]


@dataclass(frozen=True)
class CNN(Model):
    """``spatial_dims`` 1 or 2; ``in_shape`` = (cin, h, w) (h = 1 in 1-D); ``convs`` the conv
    geometry; ``dense`` the dense layer sizes from the flattened features to the classes."""

    spatial_dims: int
    in_shape: tuple[int, int, int]
    convs: tuple[ConvLayer, ...]
    dense: tuple[int, ...]

    name = "cnn"

    # The flat layout -----------------------------------------------------------------

    @cached_property
    def layout(self) -> FlatLayout:
        shapes = []
        for layer, c in enumerate(self.convs):
            kernel = (c.kw,) if self.spatial_dims == 1 else (c.kh, c.kw)
            shapes += [
                (f"conv{layer}.weight", (*kernel, c.cin, c.cout)),
                (f"conv{layer}.bias", (c.cout,)),
            ]
        for j, (fan_in, fan_out) in enumerate(zip(self.dense[:-1], self.dense[1:])):
            rows = self.feature_shape if j == 0 else (fan_in,)
            shapes += [(f"dense{j}.weight", (*rows, fan_out)), (f"dense{j}.bias", (fan_out,))]
        return FlatLayout(tuple(shapes))

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of the flattened conv features, channels last ((L, C) in 1-D)."""
        last = self.convs[-1]
        return (last.wp, last.cout) if self.spatial_dims == 1 else (last.hp, last.wp, last.cout)

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def n_classes(self) -> int:
        return self.dense[-1]

    @property
    def size(self) -> int:
        return self.layout.size

    def conv_weight(self, flat: np.ndarray, layer: int) -> np.ndarray:
        """Layer ``l``'s weights as a (kh, kw, cin, cout) view of ``flat``."""
        c = self.convs[layer]
        return self.layout.view(flat, f"conv{layer}.weight").reshape(c.kh, c.kw, c.cin, c.cout)

    def conv_bias(self, flat: np.ndarray, layer: int) -> np.ndarray:
        return self.layout.view(flat, f"conv{layer}.bias")

    def dense_weight(self, flat: np.ndarray, j: int) -> np.ndarray:
        """Dense layer ``j``'s weights as a (fan_in, fan_out) view of ``flat``."""
        return self.layout.view(flat, f"dense{j}.weight").reshape(self.dense[j], self.dense[j + 1])

    def dense_bias(self, flat: np.ndarray, j: int) -> np.ndarray:
        return self.layout.view(flat, f"dense{j}.bias")

    # The record ----------------------------------------------------------------------

    def init(self, seed: int, out: np.ndarray | None = None) -> np.ndarray:
        """He-uniform weights (fan-in: kh*kw*cin for convs), zero biases, float32."""
        flat = np.zeros(self.size, dtype=np.float32) if out is None else out
        flat[:] = 0.0
        rng = np.random.default_rng(seed)
        tensors = [(self.conv_weight(flat, layer), c.patch) for layer, c in enumerate(self.convs)]
        tensors += [(self.dense_weight(flat, j), self.dense[j]) for j in range(len(self.dense) - 1)]
        for w, fan_in in tensors:
            bound = np.sqrt(6.0 / fan_in)
            w[...] = rng.uniform(-bound, bound, size=w.shape).astype(np.float32)
        return flat

    # Kernels per backend, imported only in the process that asks (a Numba worker never
    # imports JAX).
    _KERNELS = {
        "numba": "fastdist.models.kernels.numba_cnn:NumbaCNNKernel",
        "jax": "fastdist.models.kernels.jax_cnn:JaxCNNKernel",
        "reference": "fastdist.models.kernels.reference_kernel:ReferenceKernel",
    }

    def kernel(self, backend: str, max_batch: int):
        return kernel_from(self, backend, max_batch, self._KERNELS)

    def reference_loss_and_grad(self, params, x, y):
        from fastdist.models.kernels.reference_cnn import loss_and_grad

        return loss_and_grad(self, params, x, y)

    def reference_logits(self, params, x):
        from fastdist.models.kernels.reference_cnn import forward_logits

        return forward_logits(self, params, x)

    def describe(self) -> dict:
        return {
            "spatial_dims": self.spatial_dims,
            "input": list(self.in_shape),
            "conv": [
                {
                    "out": c.cout,
                    "kernel": [c.kh, c.kw],
                    "stride": [c.sh, c.sw],
                    "padding": [c.ph, c.pw],
                    "pool": [c.qh, c.qw],
                }  # fmt: skip
                for c in self.convs
            ],
            "dense": list(self.dense),
        }

    def flops_per_sample(self) -> int:
        """6 x multiply-adds of the forward pass (forward, backward-data, backward-weights)."""
        macs = sum(c.ho * c.wo * c.patch * c.cout for c in self.convs)
        macs += sum(a * b for a, b in zip(self.dense[:-1], self.dense[1:]))
        return 6 * macs

    def permutation_spec(self) -> PermutationSpec:
        """Conv ``l``'s output channels order its weights' last axis, its bias, and the
        input-channel axis of whatever reads them (the next conv, or ``dense0``'s channel
        axis); dense hidden units as in the MLP."""
        perms = []
        n_conv, n_dense = len(self.convs), len(self.dense) - 1
        for layer in range(n_conv):
            w_axis = self.spatial_dims + 1  # (.., cin, cout)
            if layer + 1 < n_conv:
                reader = (f"conv{layer + 1}.weight", self.spatial_dims)
            else:
                reader = ("dense0.weight", self.spatial_dims)  # (.., c, units)
            perms.append(
                (f"c{layer}", ((f"conv{layer}.weight", w_axis), (f"conv{layer}.bias", 0), reader))
            )
        for j in range(n_dense - 1):
            w_axis = self.spatial_dims + 1 if j == 0 else 1
            pairs = (
                (f"dense{j}.weight", w_axis),
                (f"dense{j}.bias", 0),
                (f"dense{j + 1}.weight", 0),
            )
            perms.append((f"h{j + 1}", pairs))
        return PermutationSpec(tuple(perms))

    def unit_activations(self, params, x):
        """Conv channel ``l``'s post-ReLU map, one row per input row and position (as
        Ainsworth et al. treat convolutions); dense hidden units as in the MLP."""
        _, (convs, dense) = self.per_example_forward(
            np.asarray(params, np.float64), np.asarray(x, np.float64)
        )
        out = {f"c{layer}": z.reshape(-1, z.shape[-1]) for layer, (_, z, _) in enumerate(convs)}
        out.update({f"h{j + 1}": dense[j + 1] for j in range(len(self.dense) - 2)})
        return out

    def per_example_forward(self, params, x):
        from fastdist.models.kernels.reference_cnn import forward

        return forward(self, params, x)

    def add_squared_grads(self, params, cache, dlogits, weights, out) -> None:
        from fastdist.models.kernels.reference_cnn import add_squared_grads

        add_squared_grads(self, params, cache, dlogits, weights, out)
