"""The torch.distributed (gloo) plumbing of the PyTorch peers: ranks spawned one thread
each on 127.0.0.1, a process group per rank, and rank 0's result back through a queue.

torch is an optional extra: it is imported inside the functions only, so importing a
peer module stays cheap and works without it.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Iterator

from benchmarks.peers import _common

__all__ = ["available", "ddp_result", "process_group", "run_ranks", "timed_steps"]

# How long a rank waits for the others to join the group (or in a collective).
GROUP_TIMEOUT_S = 120


def available() -> bool:
    return _common.module_available("torch")


@contextlib.contextmanager
def process_group(rank: int, world: int, port: int) -> Iterator:
    """In a spawned rank: one torch thread, rank ``rank`` of a gloo group of ``world``
    over ``tcp://127.0.0.1:port``; yields ``torch.distributed`` and leaves the group
    on the way out. The rank dies with its parent (:func:`_common.die_with_parent`)."""
    _common.die_with_parent()
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_S),
    )
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def timed_steps(dist, train, warmup: int, steps: int) -> float:
    """In a rank: ``train(0, warmup)``, then the seconds of ``train(warmup, steps)``
    between two barriers, so that the window holds every rank's steps."""
    train(0, warmup)
    dist.barrier()
    t0 = time.perf_counter()
    train(warmup, steps)
    dist.barrier()
    return time.perf_counter() - t0


def ddp_result(name: str, workers: int, steps: int, seconds: float, global_batch: int) -> dict:
    """What rank 0 of a DDP peer reports (:func:`_common.result`, gloo, 1 thread a rank)."""
    import torch

    return _common.result(
        name, workers, steps, seconds, global_batch,
        backend="gloo", threads_per_worker=1, torch=torch.__version__,
    )  # fmt: skip


def run_ranks(rank_main, world: int, args: tuple, name: str, timeout: float) -> dict:
    """Spawn ``rank_main(rank, world, port, *args, results)`` for every rank and return
    what rank 0 puts in ``results``; ``name`` is the peer's, for the errors.

    Every rank gets one BLAS/OpenMP thread and gloo the loopback interface: the pins
    must be in the environment when the children start (a spawned interpreter reads
    ``OMP_NUM_THREADS`` before torch loads its thread pool). A rank that fails raises
    here (``ProcessRaisedException`` / ``ProcessExitedException``); after ``timeout``
    seconds without a result, TimeoutError. The ranks are reaped either way.
    """
    import torch.multiprocessing as mp

    env = dict(_common.SINGLE_THREAD_ENV, GLOO_SOCKET_IFNAME="lo")
    results = mp.get_context("spawn").SimpleQueue()
    full_args = (world, _common.free_port(), *args, results)
    context = None
    try:
        with _common.patched_env(env):
            context = mp.start_processes(
                rank_main, args=full_args, nprocs=world, join=False, start_method="spawn"
            )
        deadline = time.monotonic() + timeout
        while not context.join(timeout=0.5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: no result within {timeout:.0f} s")
        if results.empty():
            raise RuntimeError(f"{name}: rank 0 exited without a result")
        return results.get()
    finally:
        if context is not None:
            _common.reap(context.processes)
        results.close()
