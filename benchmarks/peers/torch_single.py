"""Peer: plain PyTorch, one process, ``threads`` intra-op threads (default 1).

Trains W1 with ``torch.optim.SGD(lr=0.01, momentum=0.9)`` on a global batch of
``batch * workers`` rows per step, i.e. the samples fastdist's ``workers`` workers process
in one step together, in this one process.
"""

from __future__ import annotations

import time

from benchmarks.peers import _common

NAME = "torch_single"


def available() -> bool:
    return _common.module_available("torch")


def build_model(sizes, seed: int):
    """An ``nn.Sequential`` MLP (ReLU hidden) holding fastdist's initial weights."""
    import torch
    from torch import nn

    layers: list[nn.Module] = []
    for i, (w, b) in enumerate(_common.init_weights(sizes, seed)):
        lin = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))  # torch stores (out, in)
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def train_steps(model, optimizer, data, start: int, n: int) -> None:
    """``n`` SGD steps over the (x, y) tensor pairs in ``data``, cycling from ``start``."""
    import torch.nn.functional as F

    for i in range(start, start + n):
        x, y = data[i % len(data)]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)  # mean over the batch
        loss.backward()
        optimizer.step()


def run(
    steps: int,
    warmup: int,
    workers: int,
    batch: int = 256,
    sizes=_common.DEFAULT_SIZES,
    seed: int = 0,
    threads: int = 1,
) -> dict:
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        torch.manual_seed(seed)
        global_batch = batch * workers
        x, y = _common.make_data(workers, batch, sizes, seed)
        data = [
            (torch.from_numpy(bx), torch.from_numpy(by).long())
            for bx, by in _common.batches(x, y, global_batch)
        ]
        model = build_model(sizes, seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=_common.LR, momentum=_common.MOMENTUM)
        train_steps(model, optimizer, data, 0, warmup)
        t0 = time.perf_counter()
        train_steps(model, optimizer, data, warmup, steps)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous_threads)
    return _common.result(
        NAME, workers, steps, seconds, global_batch, threads=int(threads), torch=torch.__version__
    )


if __name__ == "__main__":
    _common.cli(
        run,
        available,
        __doc__.splitlines()[0],
        extra_args=[(("--threads",), {"type": int, "default": 1})],
    )
