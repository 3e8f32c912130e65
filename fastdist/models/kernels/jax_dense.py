"""The dense (fully connected) layers of the JAX kernels: the whole MLP, and the CNN
after its conv layers. Hidden layers are ReLU, the last gives the logits."""

from __future__ import annotations

__all__ = ["dense_forward"]


def dense_forward(h, layers):
    """``h`` through ``layers``, a sequence of (weight (fan_in, fan_out), bias): traceable.

    Called while a forward pass is traced, so JAX is already imported (by
    :mod:`~fastdist.models.kernels.jax_mlp`, which checks that it is installed).
    """
    import jax

    last = len(layers) - 1
    for j, (weight, bias) in enumerate(layers):
        h = h @ weight + bias
        if j < last:
            # jax.nn.relu, not jnp.maximum: its derivative at exactly 0 is 0, like the
            # reference's (h > 0) mask (maximum would split the gradient, 0.5).
            h = jax.nn.relu(h)
    return h
