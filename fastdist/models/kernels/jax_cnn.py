"""JAX/XLA CNN kernel: ``jax.lax.conv_general_dilated`` over the CNN's flat layout.

Same calls, copies and compilation behaviour as the MLP's
:class:`~fastdist.models.kernels.jax_mlp.JaxKernel` (its module docstring explains
them); only the traced forward pass differs. Convolutions run channels-last
(``NHWC`` inputs, ``HWIO`` weights, the layout's own order), a 1-D network as a 2-D one
of height 1; max-pool is ``lax.reduce_window`` with ``VALID`` windows (the floor the
other kernels take); the dense layers are the MLP's (:mod:`jax_dense`).
"""

from __future__ import annotations

from fastdist.models.kernels.jax_dense import dense_forward
from fastdist.models.kernels.jax_mlp import JaxKernel, _import_jax

__all__ = ["JaxCNNKernel", "cnn_forward"]


def cnn_forward(model):
    """The CNN's forward pass as a traceable function of (tensors by layout name, x rows).

    The layout's conv weights are ``(kh, kw, cin, cout)``, i.e. already ``HWIO``.
    """
    jax, jnp = _import_jax()
    lax = jax.lax
    cin, h, w = model.in_shape

    def forward(tensors, x):
        batch = x.shape[0]
        a = x.reshape(batch, cin, h, w).transpose(0, 2, 3, 1)
        for layer, c in enumerate(model.convs):
            kernel = tensors[f"conv{layer}.weight"].reshape(c.kh, c.kw, c.cin, c.cout)
            bias = tensors[f"conv{layer}.bias"]
            a = lax.conv_general_dilated(
                a,
                kernel,
                window_strides=(c.sh, c.sw),
                padding=((c.ph, c.ph), (c.pw, c.pw)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            a = jax.nn.relu(a + bias)
            if c.qh * c.qw > 1:
                window = (1, c.qh, c.qw, 1)
                a = lax.reduce_window(a, -jnp.inf, lax.max, window, window, "VALID")
        dense = [
            (tensors[f"dense{j}.weight"].reshape(fan_in, fan_out), tensors[f"dense{j}.bias"])
            for j, (fan_in, fan_out) in enumerate(zip(model.dense[:-1], model.dense[1:]))
        ]
        return dense_forward(a.reshape(batch, -1), dense)

    return forward


class JaxCNNKernel(JaxKernel):
    """XLA-compiled loss/gradient and prediction for one
    :class:`~fastdist.models.cnn_record.CNN`."""

    def _forward(self, model):
        return cnn_forward(model)
