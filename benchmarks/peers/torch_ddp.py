"""Peer: PyTorch DistributedDataParallel over gloo, ``workers`` processes x 1 thread.

Each rank trains a DDP-wrapped copy of the W1 MLP on its own contiguous shard, batch
``batch`` per rank per step (global batch ``batch * workers``); DDP averages the
gradients with gloo allreduces on 127.0.0.1 during backward. Rank 0 times ``steps``
steps between two barriers after ``warmup`` steps and reports through a queue.
"""

from __future__ import annotations

from benchmarks.peers import _common, _gloo

NAME = "torch_ddp"
# Seconds the coordinator waits for the whole run (setup included) before killing it.
TIMEOUT_S = 900.0


def available() -> bool:
    return _gloo.available()


def _rank_main(rank, workers, port, steps, warmup, batch, sizes, seed, results) -> None:
    with _gloo.process_group(rank, workers, port) as dist:
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP

        from benchmarks.peers.torch_single import build_model, train_steps

        torch.manual_seed(seed)
        x, y = _common.make_data(workers, batch, sizes, seed)
        x, y = _common.shard(x, y, rank, workers)
        data = [
            (torch.from_numpy(bx), torch.from_numpy(by).long())
            for bx, by in _common.batches(x, y, batch)
        ]
        del x, y
        model = DDP(build_model(sizes, seed))
        optimizer = torch.optim.SGD(model.parameters(), lr=_common.LR, momentum=_common.MOMENTUM)
        seconds = _gloo.timed_steps(
            dist, lambda start, n: train_steps(model, optimizer, data, start, n), warmup, steps
        )
        if rank == 0:
            results.put(_gloo.ddp_result(NAME, workers, steps, seconds, batch * workers))


def run(
    steps: int,
    warmup: int,
    workers: int,
    batch: int = 256,
    sizes=_common.DEFAULT_SIZES,
    seed: int = 0,
    timeout: float = TIMEOUT_S,
) -> dict:
    args = (steps, warmup, batch, tuple(sizes), seed)
    return _gloo.run_ranks(_rank_main, workers, args, NAME, timeout)


if __name__ == "__main__":
    _common.cli(run, available, __doc__.splitlines()[0])
