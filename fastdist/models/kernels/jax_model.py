"""The kernel of a bring-your-own JAX model (:mod:`fastdist.models.jax_model`).

The loss, gradient, prediction, copies and compilation are the MLP's JAX kernel's
(:class:`~fastdist.models.kernels.jax_mlp.JaxKernel`); the forward pass is the user's
``apply`` on the pytree rebuilt from the layout's leaves.
"""

from __future__ import annotations

import functools

import numpy as np

from fastdist.models.kernels.jax_mlp import JaxKernel, _import_jax

__all__ = ["JaxModelKernel", "weighted_squared_grads"]


class JaxModelKernel(JaxKernel):
    """XLA-compiled loss/gradient and prediction of a user's JAX model."""

    def _forward(self, model):
        return model.tensor_forward()


@functools.cache
def _squared_grads_fn(model):
    jax, jnp = _import_jax()
    forward = model.forward()

    def one(flat, row, dlogit):
        _, vjp = jax.vjp(lambda p: forward(p, row[None])[0], flat)
        return vjp(dlogit)[0]

    def weighted(flat, rows, dlogits, weights):
        grads = jax.vmap(one, in_axes=(None, 0, 0))(flat, rows, dlogits)
        return jnp.einsum("b,bp->p", weights, grads * grads)

    return jax.jit(weighted)


def weighted_squared_grads(model, flat, rows, dlogits, weights) -> np.ndarray:
    """``sum_i weights[i] * g_i ** 2`` with ``g_i = J_i^T dlogits[i]`` (float32 math)."""
    fn = _squared_grads_fn(model)
    f32 = np.float32
    return np.asarray(fn(flat, rows, dlogits.astype(f32), weights.astype(f32)), np.float64)
