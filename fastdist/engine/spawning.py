"""How the coordinator starts spawn-context workers from any host process: the global
start method a spawned child can look up, and the CPUs each worker is pinned to."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os

__all__ = ["standard_start_method", "cpu_sets"]


@contextlib.contextmanager
def standard_start_method():
    """Inside a joblib/loky worker (Hydra's joblib launcher) the global start method is
    "loky", which a spawned child's bootstrap cannot look up ("cannot find context for
    'loky'"): children record the global method in their preparation data. Make "spawn"
    the global method while our children start (public API only), then put the host's
    back."""
    method = mp.get_start_method(allow_none=True)
    if method is None or method in mp.get_all_start_methods():
        yield
        return
    mp.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        mp.set_start_method(method, force=True)


def cpu_sets(n_workers: int, threads: int) -> list[tuple[int, ...]]:
    """``threads`` CPUs per worker, round-robin over the CPUs this process may use
    (workers share CPUs only when workers x threads exceeds them)."""
    available = sorted(os.sched_getaffinity(0))
    return [
        tuple(sorted({available[(rank * threads + i) % len(available)] for i in range(threads)}))
        for rank in range(n_workers)
    ]
