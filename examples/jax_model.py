"""A model of your own, in plain JAX, trained by fastdist's workers.

fastdist calls ``make(cfg)`` with ``cfg.input_shape`` and ``cfg.n_classes`` from the
dataset and the entries of ``model.options``; it wants back ``init(rng) -> params`` (any
pytree) and ``apply(params, x) -> logits``. From the repository root:

    PYTHONPATH=. fastdist model=jax model.factory=examples.jax_model:make backend=jax \\
        +model.options.hidden=[64,64] combiner=weight_avg

or run this file: ``python examples/jax_model.py`` (digits, 2 workers, grad_avg).
A Flax or Equinox module fits the same shape: ``init = lambda rng: module.init(rng, x0)``,
``apply = module.apply``.
"""

from __future__ import annotations

import math


def make(cfg):
    import jax
    import jax.numpy as jnp

    sizes = [math.prod(cfg.input_shape), *getattr(cfg, "hidden", (64,)), cfg.n_classes]

    def init(rng):
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            rng, key = jax.random.split(rng)
            bound = math.sqrt(6.0 / fan_in)
            w = jax.random.uniform(key, (fan_in, fan_out), minval=-bound, maxval=bound)
            params.append({"w": w, "b": jnp.zeros(fan_out)})
        return params

    def apply(params, x):
        h = x.reshape(x.shape[0], -1)
        for layer in params[:-1]:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        return h @ params[-1]["w"] + params[-1]["b"]

    return init, apply


if __name__ == "__main__":
    import fastdist

    # Run as a script, this file's folder is on sys.path: the module is "jax_model".
    cfg = fastdist.compose(
        ["model=jax", "model.factory=jax_model:make", "backend=jax", "workers=2", "epochs=10"]
    )
    print(fastdist.train(cfg).metrics["test_accuracy"])
