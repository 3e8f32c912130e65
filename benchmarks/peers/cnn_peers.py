"""Peers for workload W3 (``model=cnn_mnist``, synthetic 28x28 images, batch 64 per
worker, momentum SGD): PyTorch in one process, PyTorch DDP (gloo), JAX in one process.

Every peer starts from fastdist's own initial weights (:meth:`CNN.init`, converted to
PyTorch's OIHW / (c, h, w)-flattened order) and trains on the same synthetic data.

    python -m benchmarks.peers.cnn_peers torch_single --workers 1 --threads 1
    python -m benchmarks.peers.cnn_peers torch_ddp --workers 2
    python -m benchmarks.peers.cnn_peers jax_single --workers 2 [--cpus 1]

Each prints one JSON result (``samples_per_second`` over ``steps`` timed steps after
``warmup`` steps; a step consumes ``batch * workers`` samples).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchmarks.peers import _common, _gloo

LR = 0.01
MOMENTUM = 0.9
BATCHES_PER_WORKER = 8
# Seconds a multi-process peer may take, set-up included, before it is killed.
TIMEOUT_S = 900.0


def w3_model():
    """The cnn_mnist record for 28x28 inputs, built from fastdist's own config."""
    import fastdist
    from fastdist.run.records import build_model

    return build_model(fastdist.compose(["model=cnn_mnist"]).model, (28, 28), 10)


def make_data(workers: int, batch: int, seed: int = 0):
    from fastdist.data.datasets import make_synthetic

    return make_synthetic(workers * batch * BATCHES_PER_WORKER, 784, 10, seed)


def torch_net(model, flat: np.ndarray):
    """A PyTorch ``nn.Sequential`` computing ``model`` (2-D CNN) with weights ``flat``."""
    import torch
    from torch import nn

    if model.spatial_dims != 2:
        raise ValueError("the PyTorch peer builds 2-D CNNs only")
    layers: list = [nn.Unflatten(1, model.in_shape)]
    for i, c in enumerate(model.convs):
        conv = nn.Conv2d(c.cin, c.cout, (c.kh, c.kw), (c.sh, c.sw), (c.ph, c.pw))
        with torch.no_grad():
            conv.weight.copy_(
                torch.from_numpy(model.conv_weight(flat, i).transpose(3, 2, 0, 1).copy())
            )
            conv.bias.copy_(torch.from_numpy(model.conv_bias(flat, i).copy()))
        layers += [conv, nn.ReLU()]
        if c.qh * c.qw > 1:
            layers.append(nn.MaxPool2d((c.qh, c.qw)))
    layers.append(nn.Flatten())
    last = model.convs[-1]
    for j in range(len(model.dense) - 1):
        w = model.dense_weight(flat, j)
        if j == 0:  # rows in (h, w, c) order -> torch's flatten order (c, h, w)
            w = w.reshape(last.hp, last.wp, last.cout, -1).transpose(2, 0, 1, 3).reshape(w.shape)
        lin = nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(model.dense_bias(flat, j).copy()))
        layers.append(lin)
        if j < len(model.dense) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _torch_batches(x, y, batch):
    import torch

    return [
        (torch.from_numpy(bx), torch.from_numpy(by).long())
        for bx, by in _common.batches(x, y, batch)
    ]


def _train(net, optimizer, data, start: int, n: int) -> None:
    import torch.nn.functional as F

    for i in range(start, start + n):
        x, y = data[i % len(data)]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()


def torch_single(
    steps: int, warmup: int, workers: int, batch: int, seed: int, threads: int = 1
) -> dict:
    import torch

    torch.set_num_threads(int(threads))
    model = w3_model()
    net = torch_net(model, model.init(seed))
    x, y = make_data(workers, batch, seed)
    data = _torch_batches(x, y, batch * workers)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    _train(net, optimizer, data, 0, warmup)
    t0 = time.perf_counter()
    _train(net, optimizer, data, warmup, steps)
    seconds = time.perf_counter() - t0
    return _common.result(
        "torch_single",
        workers,
        steps,
        seconds,
        batch * workers,
        threads=int(threads),
        torch=torch.__version__,
    )


def _ddp_rank(rank, workers, port, steps, warmup, batch, seed, results) -> None:
    with _gloo.process_group(rank, workers, port) as dist:
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = w3_model()
        net = DDP(torch_net(model, model.init(seed)))
        x, y = _common.shard(*make_data(workers, batch, seed), rank, workers)
        data = _torch_batches(x, y, batch)
        optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
        seconds = _gloo.timed_steps(
            dist, lambda start, n: _train(net, optimizer, data, start, n), warmup, steps
        )
        if rank == 0:
            results.put(_gloo.ddp_result("torch_ddp", workers, steps, seconds, batch * workers))


def torch_ddp(steps: int, warmup: int, workers: int, batch: int, seed: int) -> dict:
    args = (steps, warmup, batch, seed)
    return _gloo.run_ranks(_ddp_rank, workers, args, "torch_ddp", TIMEOUT_S)


def jax_single(steps: int, warmup: int, workers: int, batch: int, seed: int, cpus: int = 0) -> dict:
    """JAX natively: one jitted step (the CNN's forward from fastdist's JAX kernel on a
    dict of tensors, value_and_grad, momentum SGD with donated buffers) on a global
    batch. ``cpus`` > 0 restricts the process to that many cores before JAX starts (XLA
    sizes its pool from the affinity)."""
    if cpus:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cpus])
    import functools

    import jax
    import jax.numpy as jnp

    from fastdist.models.kernels.jax_cnn import cnn_forward

    model = w3_model()
    forward = cnn_forward(model)

    def loss_fn(params, x, y):
        logp = jax.nn.log_softmax(forward(params, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, velocity, x, y):
        loss, grad = jax.value_and_grad(loss_fn)(params, x, y)
        velocity = jax.tree_util.tree_map(lambda v, g: MOMENTUM * v + g, velocity, grad)
        params = jax.tree_util.tree_map(lambda p, v: p - LR * v, params, velocity)
        return params, velocity, loss

    x, y = make_data(workers, batch, seed)
    data = [
        (jax.device_put(bx), jax.device_put(by))
        for bx, by in _common.batches(x, y, batch * workers)
    ]
    # The idiomatic JAX layout: a pytree of tensors (the layout's, by name).
    params = {k: jnp.asarray(v) for k, v in model.layout.unflatten(model.init(seed)).items()}
    velocity = jax.tree_util.tree_map(jnp.zeros_like, params)

    def train(start, n):
        nonlocal params, velocity
        for i in range(start, start + n):
            params, velocity, _ = step(params, velocity, *data[i % len(data)])
        jax.block_until_ready(params)

    train(0, max(warmup, 1))
    t0 = time.perf_counter()
    train(max(warmup, 1), steps)
    seconds = time.perf_counter() - t0
    cpus = cpus or len(os.sched_getaffinity(0))
    return _common.result(
        "jax_single", workers, steps, seconds, batch * workers, cpus=cpus, jax=jax.__version__
    )


def numba_kernel(steps: int, warmup: int, workers: int, batch: int, seed: int) -> dict:
    """Not a peer: fastdist's Numba CNN kernel and SGD update in a plain loop, one
    process, no workers or arena: what the engine adds is the difference to
    ``fastdist`` with one worker."""
    from fastdist.optim import sgd

    optimizer = sgd(lr=LR, momentum=MOMENTUM)  # the record the workers step with
    model = w3_model()
    params = model.init(seed)
    velocity = np.zeros_like(params)
    grad = np.empty_like(params)
    kernel = model.kernel("numba", batch * workers)
    x, y = make_data(workers, batch, seed)
    data = _common.batches(x, y, batch * workers)

    def train(start, n):
        for i in range(start, start + n):
            kernel.loss_and_grad(params, *data[i % len(data)], grad)
            optimizer.update(params, (velocity,), grad, 0, params.size, i)

    train(0, max(warmup, 1))
    t0 = time.perf_counter()
    train(max(warmup, 1), steps)
    seconds = time.perf_counter() - t0
    return _common.result("numba_kernel", workers, steps, seconds, batch * workers)


PEERS = {
    "numba_kernel": numba_kernel,
    "torch_single": torch_single,
    "torch_ddp": torch_ddp,
    "jax_single": jax_single,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cpus", type=int, default=None)
    ns = vars(parser.parse_args())
    peer = PEERS[ns.pop("peer")]
    kwargs = {k: v for k, v in ns.items() if v is not None}
    print(json.dumps(peer(**kwargs)))


if __name__ == "__main__":
    main()
