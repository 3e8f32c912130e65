"""Peer: JAX, one process, XLA's default CPU threading (all cores).

One ``jax.jit``-compiled step does forward, ``jax.value_and_grad`` of the mean softmax
cross-entropy and the momentum-SGD update (PyTorch convention: v = 0.9 v + g; p -= 0.01 v),
with the parameter and momentum buffers donated. Each step takes a global batch of
``batch * workers`` rows: the samples fastdist's ``workers`` workers process in one step.
Warm-up steps include the compilation.
"""

from __future__ import annotations

import time

from benchmarks.peers import _common

NAME = "jax_single"


def available() -> bool:
    return _common.module_available("jax")


def make_step(lr: float = _common.LR, mu: float = _common.MOMENTUM):
    import functools

    import jax
    import jax.numpy as jnp

    def loss_fn(params, x, y):
        h = x
        for w, b in params[:-1]:
            h = jax.nn.relu(h @ w + b)
        w, b = params[-1]
        logp = jax.nn.log_softmax(h @ w + b)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, velocity, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        velocity = jax.tree_util.tree_map(lambda v, g: mu * v + g, velocity, grads)
        params = jax.tree_util.tree_map(lambda p, v: p - lr * v, params, velocity)
        return params, velocity, loss

    return step


def run(
    steps: int,
    warmup: int,
    workers: int,
    batch: int = 256,
    sizes=_common.DEFAULT_SIZES,
    seed: int = 0,
) -> dict:
    import jax
    import jax.numpy as jnp

    global_batch = batch * workers
    x, y = _common.make_data(workers, batch, sizes, seed)
    data = [
        (jax.device_put(bx), jax.device_put(by)) for bx, by in _common.batches(x, y, global_batch)
    ]
    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in _common.init_weights(sizes, seed)]
    velocity = jax.tree_util.tree_map(jnp.zeros_like, params)
    step = make_step()

    def train(start: int, n: int):
        nonlocal params, velocity
        loss = None
        for i in range(start, start + n):
            bx, by = data[i % len(data)]
            params, velocity, loss = step(params, velocity, bx, by)
        jax.block_until_ready((params, velocity))
        return loss

    train(0, max(warmup, 1))  # at least one step, so compilation is never timed
    t0 = time.perf_counter()
    loss = train(max(warmup, 1), steps)
    seconds = time.perf_counter() - t0
    return _common.result(
        NAME,
        workers,
        steps,
        seconds,
        global_batch,
        final_loss=float(loss) if loss is not None else None,
        jax=jax.__version__,
        backend=jax.default_backend(),
    )


if __name__ == "__main__":
    _common.cli(run, available, __doc__.splitlines()[0])
