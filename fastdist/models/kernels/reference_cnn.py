"""Plain-NumPy CNN forward/backward: readable, allocating, and the test oracle.

Written for any float dtype (the Fisher combiner runs it in float64). A convolution is
a sum over the kernel offsets ``(i, j)`` of strided input slices times ``W[i, j]``; the
backward pass keeps every example's deltas apart, so the same code gives the batch
gradient (summed) and per-example squared gradients (Fisher). The ``reference`` backend
is :class:`~fastdist.models.kernels.reference_kernel.ReferenceKernel` over these
functions.
"""

from __future__ import annotations

import numpy as np

from fastdist.models.kernels.reference_mlp import dense_outputs, softmax_cross_entropy

__all__ = [
    "add_squared_grads",
    "backward",
    "forward",
    "forward_logits",
    "loss_and_grad",
    "to_nhwc",
]


def to_nhwc(model, x: np.ndarray) -> np.ndarray:
    """Arena rows (channels-first samples) as a (batch, h, w, cin) array."""
    cin, h, w = model.in_shape
    return np.ascontiguousarray(x.reshape(x.shape[0], cin, h, w).transpose(0, 2, 3, 1))


def _taps(c, xpad: np.ndarray):
    """(i, j, strided slice of the padded input that kernel offset (i, j) multiplies)."""
    for i in range(c.kh):
        for j in range(c.kw):
            yield (
                i,
                j,
                xpad[:, i : i + c.sh * (c.ho - 1) + 1 : c.sh, j : j + c.sw * (c.wo - 1) + 1 : c.sw],
            )


def _pad(c, a: np.ndarray) -> np.ndarray:
    return np.pad(a, ((0, 0), (c.ph, c.ph), (c.pw, c.pw), (0, 0)))


def _windows(c, z: np.ndarray) -> np.ndarray:
    """(batch, hp, wp, cout, qh * qw): the pooling windows of the ReLU output."""
    b = z.shape[0]
    crop = z[:, : c.hp * c.qh, : c.wp * c.qw]
    win = crop.reshape(b, c.hp, c.qh, c.wp, c.qw, c.cout).transpose(0, 1, 3, 5, 2, 4)
    return win.reshape(b, c.hp, c.wp, c.cout, c.qh * c.qw)


def forward(model, params: np.ndarray, x: np.ndarray):
    """(logits, cache); the cache holds each layer's padded input, ReLU output and pool
    argmax, then the dense layers' inputs."""
    a = to_nhwc(model, x).astype(params.dtype)
    convs = []
    for layer, c in enumerate(model.convs):
        xpad = _pad(c, a)
        z = np.zeros((a.shape[0], c.ho, c.wo, c.cout), dtype=params.dtype)
        w = model.conv_weight(params, layer)
        for i, j, tap in _taps(c, xpad):
            z += tap @ w[i, j]
        z = np.maximum(z + model.conv_bias(params, layer), 0.0)
        if c.qh * c.qw > 1:
            win = _windows(c, z)
            arg = win.argmax(axis=-1)
            a = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
        else:
            arg, a = None, z
        convs.append((xpad, z, arg))
    n_dense = len(model.dense) - 1
    layers = [(model.dense_weight(params, j), model.dense_bias(params, j)) for j in range(n_dense)]
    dense = dense_outputs(a.reshape(a.shape[0], -1), layers)
    return dense[-1], (convs, dense)


def forward_logits(model, params: np.ndarray, x: np.ndarray, chunk: int = 256) -> np.ndarray:
    """The logits of ``x``, ``chunk`` rows at a time: :func:`forward` keeps every
    layer's maps of all the rows it is given (GBs for a whole test set)."""
    out = np.empty((x.shape[0], model.n_classes), dtype=params.dtype)
    for lo in range(0, x.shape[0], chunk):
        out[lo : lo + chunk] = forward(model, params, x[lo : lo + chunk])[0]
    return out


def backward(model, params: np.ndarray, cache, dlogits: np.ndarray):
    """Per-example deltas: (conv deltas at each conv's pre-ReLU output, (b, ho, wo, cout);
    dense deltas at each dense layer's output, (b, units)), for ``dlogits`` (b, classes)."""
    convs, dense = cache
    n_dense = len(model.dense) - 1
    dense_deltas = [None] * n_dense
    delta = dlogits
    for j in reversed(range(n_dense)):
        dense_deltas[j] = delta
        delta = delta @ model.dense_weight(params, j).T
        if j > 0:
            delta = delta * (dense[j] > 0)
    conv_deltas = [None] * len(model.convs)
    for layer in reversed(range(len(model.convs))):
        c = model.convs[layer]
        xpad, z, arg = convs[layer]
        pooled = delta.reshape(delta.shape[0], c.hp, c.wp, c.cout)
        if arg is not None:
            win = np.zeros(pooled.shape + (c.qh * c.qw,), dtype=delta.dtype)
            np.put_along_axis(win, arg[..., None], pooled[..., None], axis=-1)
            b = win.shape[0]
            crop = win.reshape(b, c.hp, c.wp, c.cout, c.qh, c.qw).transpose(0, 1, 4, 2, 5, 3)
            dz = np.zeros_like(z)
            dz[:, : c.hp * c.qh, : c.wp * c.qw] = crop.reshape(b, c.hp * c.qh, c.wp * c.qw, c.cout)
        else:
            dz = pooled.copy()
        dz *= z > 0
        conv_deltas[layer] = dz
        if layer > 0:
            dpad = np.zeros_like(xpad)
            w = model.conv_weight(params, layer)
            for i, j, _ in _taps(c, xpad):
                dpad[
                    :, i : i + c.sh * (c.ho - 1) + 1 : c.sh, j : j + c.sw * (c.wo - 1) + 1 : c.sw
                ] += dz @ w[i, j].T
            delta = dpad[:, c.ph : c.ph + c.h, c.pw : c.pw + c.w]
    return conv_deltas, dense_deltas


def loss_and_grad(model, params: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Mean softmax cross-entropy, its gradient w.r.t. the flat params, and #correct."""
    logits, cache = forward(model, params, x)
    loss, correct, dlogits = softmax_cross_entropy(logits, y, params.dtype)
    conv_deltas, dense_deltas = backward(model, params, cache, dlogits)
    grad = np.zeros_like(params)
    convs, dense = cache
    for j, delta in enumerate(dense_deltas):
        model.dense_weight(grad, j)[:] = dense[j].T @ delta
        model.dense_bias(grad, j)[:] = delta.sum(axis=0)
    for layer, dz in enumerate(conv_deltas):
        gw = model.conv_weight(grad, layer)
        for i, j, tap in _taps(model.convs[layer], convs[layer][0]):
            gw[i, j] = np.einsum("bhwc,bhwd->cd", tap, dz)
        model.conv_bias(grad, layer)[:] = dz.sum(axis=(0, 1, 2))
    return loss, grad, correct


def add_squared_grads(model, params, cache, dlogits, weights, out) -> None:
    """``out += sum_i weights[i] * g_i ** 2`` over the cached batch (Fisher)."""
    conv_deltas, dense_deltas = backward(model, params, cache, dlogits)
    convs, dense = cache
    for j, delta in enumerate(dense_deltas):
        h = dense[j]
        model.dense_weight(out, j)[:] += (h * h * weights[:, None]).T @ (delta * delta)
        model.dense_bias(out, j)[:] += weights @ (delta * delta)
    for layer, dz in enumerate(conv_deltas):
        gw = model.conv_weight(out, layer)
        for i, j, tap in _taps(model.convs[layer], convs[layer][0]):
            per_example = np.einsum("bhwc,bhwd->bcd", tap, dz)
            gw[i, j] += np.einsum("b,bcd->cd", weights, per_example * per_example)
        per_bias = dz.sum(axis=(1, 2))
        model.conv_bias(out, layer)[:] += weights @ (per_bias * per_bias)
