"""Convolutional networks, 1-D and 2-D: ``model=cnn`` (and the presets ``cnn1d_mnist1d``,
``cnn_mnist``).

Conv layer ``l`` (zero padding, stride, then bias, ReLU and an optional non-overlapping
max-pool) maps channels ``c[layer]`` to ``c[layer + 1]``; the last feature map is flattened and
followed by ReLU dense layers and a linear output layer.

This module holds the factory that ``_target_: fastdist.models.cnn.cnn`` names (it
checks the options and works out each layer's geometry); the record is
:class:`~fastdist.models.cnn_record.CNN` and a layer's geometry
:class:`~fastdist.models.conv_layer.ConvLayer`.
"""

from __future__ import annotations

from fastdist.errors import ConfigError
from fastdist.models.cnn_record import CNN
from fastdist.models.conv_layer import ConvLayer

__all__ = ["cnn"]


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
