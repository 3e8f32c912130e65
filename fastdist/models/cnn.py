"""Convolutional networks, 1-D and 2-D: ``model=cnn`` (and the presets ``cnn1d_mnist1d``,
``cnn_mnist``).

Conv layer ``l`` (zero padding, stride, then bias, ReLU and an optional non-overlapping
max-pool) maps channels ``c[layer]`` to ``c[layer + 1]``; the last feature map is flattened and
followed by ReLU dense layers and a linear output layer.

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

from fastdist.errors import ConfigError
from fastdist.models.base import FlatLayout, Model, PermutationSpec, kernel_from

__all__ = ["CNN", "ConvLayer", "cnn"]


@dataclass(frozen=True)
class ConvLayer:
    """One conv layer's geometry (2-D; ``kh = sh = qh = 1, ph = 0`` for 1-D)."""

    cin: int
    h: int
    w: int
    cout: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    qh: int  # max-pool window = stride; 1 = no pooling
    qw: int

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.ph - self.kh) // self.sh + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.pw - self.kw) // self.sw + 1

    @property
    def hp(self) -> int:
        return self.ho // self.qh

    @property
    def wp(self) -> int:
        return self.wo // self.qw

    @property
    def patch(self) -> int:
        """im2col row length: kh * kw * cin."""
        return self.kh * self.kw * self.cin

    def row(self) -> tuple[int, ...]:
        """The integer geometry row the Numba kernel reads (columns: kernels.numba_im2col.GEOM)."""
        return (
            *(self.cin, self.h, self.w, self.cout, self.kh, self.kw, self.sh, self.sw),
            *(self.ph, self.pw, self.ho, self.wo, self.qh, self.qw, self.hp, self.wp),
        )


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
        "reference": "fastdist.models.kernels.reference_cnn:ReferenceCNNKernel",
    }

    def kernel(self, backend: str, max_batch: int):
        return kernel_from(self, backend, max_batch, self._KERNELS)

    def reference_loss_and_grad(self, params, x, y):
        from fastdist.models.kernels.reference_cnn import loss_and_grad

        return loss_and_grad(self, params, x, y)

    def reference_logits(self, params, x):
        from fastdist.models.kernels.reference_cnn import forward

        return forward(self, params, x)[0]

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

    def per_example_forward(self, params, x):
        from fastdist.models.kernels.reference_cnn import forward

        return forward(self, params, x)

    def add_squared_grads(self, params, cache, dlogits, weights, out) -> None:
        from fastdist.models.kernels.reference_cnn import add_squared_grads

        add_squared_grads(self, params, cache, dlogits, weights, out)


def _per_layer(name: str, values, n: int) -> list[int]:
    try:
        values = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"model.{name} must be a list of integers, got {values!r}") from None
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise ConfigError(f"model.{name} needs one value per conv layer ({n}), got {values}")
    return values


def cnn(
    channels: list[int] = (16, 32),
    kernel_sizes: list[int] = (3,),
    strides: list[int] = (1,),
    padding: list[int] = (0,),
    pool: list[int] = (2,),
    hidden: list[int] = (64,),
    spatial_dims: int | None = None,
    *,
    input_shape: tuple[int, ...],
    n_classes: int,
) -> CNN:
    """``model=cnn``: conv layers of ``channels`` outputs each (``kernel_sizes``,
    ``strides``, ``padding``, max-``pool`` window per layer; a single value applies to
    every layer; pool 1 = none), then ReLU dense layers of widths ``hidden``.
    ``spatial_dims`` (1 or 2) defaults to 1 for samples of shape (L,), else 2; samples of
    shape (C, L) need ``spatial_dims=1``."""
    shape = tuple(int(d) for d in input_shape)
    dims = (1 if len(shape) == 1 else 2) if spatial_dims is None else int(spatial_dims)
    if dims not in (1, 2):
        raise ConfigError(f"model.spatial_dims must be 1 or 2, got {spatial_dims}")
    if dims == 1 and len(shape) in (1, 2):
        cin, h, w = (1, 1, shape[0]) if len(shape) == 1 else (shape[0], 1, shape[1])
    elif dims == 2 and len(shape) in (2, 3):
        cin, h, w = (1, *shape) if len(shape) == 2 else shape
    else:
        raise ConfigError(
            f"model=cnn with spatial_dims={dims} cannot read samples of shape {shape}"
        )
    outs = _per_layer("channels", channels, len(channels))
    n = len(outs)
    if n < 1 or min(outs) < 1:
        raise ConfigError(f"model.channels needs at least one size >= 1, got {channels}")
    ks, ss = _per_layer("kernel_sizes", kernel_sizes, n), _per_layer("strides", strides, n)
    ps, qs = _per_layer("padding", padding, n), _per_layer("pool", pool, n)
    if min(ks) < 1 or min(ss) < 1 or min(qs) < 1 or min(ps) < 0:
        raise ConfigError("model kernel sizes, strides and pools must be >= 1, padding >= 0")
    widths = _per_layer("hidden", hidden, len(hidden)) if len(hidden) else []
    if any(u < 1 for u in widths):
        raise ConfigError(f"model.hidden sizes must be >= 1, got {widths}")
    convs = []
    for layer, cout in enumerate(outs):
        two = dims == 2
        conv = ConvLayer(
            cin, h, w, cout,
            ks[layer] if two else 1, ks[layer], ss[layer] if two else 1, ss[layer],
            ps[layer] if two else 0, ps[layer], qs[layer] if two else 1, qs[layer],
        )  # fmt: skip
        if conv.ho < 1 or conv.wo < 1 or conv.hp < 1 or conv.wp < 1:
            raise ConfigError(
                f"model=cnn: conv layer {layer} leaves no output for an input of {h}x{w} "
                f"(kernel {ks[layer]}, stride {ss[layer]}, padding {ps[layer]}, pool {qs[layer]})"
            )
        convs.append(conv)
        cin, h, w = cout, conv.hp, conv.wp
    return CNN(dims, tuple(int(v) for v in (convs[0].cin, convs[0].h, convs[0].w)), tuple(convs),
               (cin * h * w, *widths, int(n_classes)))  # fmt: skip
