"""Peer: PyTorch DistributedDataParallel over gloo, ``workers`` processes x 1 thread.

Each rank trains a DDP-wrapped copy of the W1 MLP on its own contiguous shard, batch
``batch`` per rank per step (global batch ``batch * workers``); DDP averages the
gradients with gloo allreduces on 127.0.0.1 during backward. Rank 0 times ``steps``
steps between two barriers after ``warmup`` steps and reports through a queue.
"""

from __future__ import annotations

import datetime
import time

from benchmarks.peers import _common

NAME = "torch_ddp"
# Seconds the coordinator waits for the whole run (setup included) before killing it.
TIMEOUT_S = 900.0


def available() -> bool:
    return _common.module_available("torch")


def _rank_main(rank, workers, port, steps, warmup, batch, sizes, seed, results) -> None:
    _common.die_with_parent()
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from benchmarks.peers.torch_single import build_model, train_steps

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=workers,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
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
        train_steps(model, optimizer, data, 0, warmup)
        dist.barrier()
        t0 = time.perf_counter()
        train_steps(model, optimizer, data, warmup, steps)
        dist.barrier()
        seconds = time.perf_counter() - t0
        if rank == 0:
            results.put(
                _common.result(
                    NAME,
                    workers,
                    steps,
                    seconds,
                    batch * workers,
                    backend="gloo",
                    threads_per_worker=1,
                    torch=torch.__version__,
                )
            )
    finally:
        dist.destroy_process_group()


def run(
    steps: int,
    warmup: int,
    workers: int,
    batch: int = 256,
    sizes=_common.DEFAULT_SIZES,
    seed: int = 0,
    timeout: float = TIMEOUT_S,
) -> dict:
    import torch.multiprocessing as mp

    env = dict(_common.SINGLE_THREAD_ENV, GLOO_SOCKET_IFNAME="lo")
    results = mp.get_context("spawn").SimpleQueue()
    port = _common.free_port()
    args = (workers, port, steps, warmup, batch, tuple(sizes), seed, results)
    context = None
    try:
        # The pins must be in the environment when the children start: spawned
        # interpreters read OMP_NUM_THREADS before torch loads its thread pool.
        with _common.patched_env(env):
            context = mp.start_processes(
                _rank_main, args=args, nprocs=workers, join=False, start_method="spawn"
            )
        deadline = time.monotonic() + timeout
        # join() raises ProcessRaisedException / ProcessExitedException if a rank fails.
        while not context.join(timeout=0.5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{NAME}: no result within {timeout:.0f} s")
        if results.empty():
            raise RuntimeError(f"{NAME}: rank 0 exited without a result")
        return results.get()
    finally:
        if context is not None:
            _common.reap(context.processes)
        results.close()


if __name__ == "__main__":
    _common.cli(run, available, __doc__.splitlines()[0])
