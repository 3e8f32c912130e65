"""Reusable pieces for the benchmarks: W1/W2 shapes, a persistent allreduce pool, and
the timing and reporting of the ``*_ratios`` scripts."""

from __future__ import annotations

import json
import statistics
import time

import numpy as np

from fastdist.engine.allreduce import allreduce_mean
from fastdist.engine.barrier import SpinBarrier, barrier_shape
from fastdist.engine.pool import WorkerPool
from fastdist.engine.shm import SharedArena
from fastdist.models.mlp import MLP

__all__ = ["W1", "W2", "AllreducePool", "batch_for", "median_seconds", "report"]

W1 = {"sizes": (784, 1024, 1024, 10), "batch": 256}
W2 = {"sizes": (64, 256, 256, 10), "batch": 64}


def batch_for(workload: dict, seed: int = 0):
    layout = MLP(workload["sizes"])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((workload["batch"], layout.n_inputs)).astype(np.float32)
    y = rng.integers(0, layout.n_classes, workload["batch"]).astype(np.int32)
    return layout, x, y


def _allreduce_worker(ctx, spec) -> None:
    arena = SharedArena.attach(spec)
    # The coordinator is one more party on this control barrier: it starts and ends
    # each timed round; the workers' own barrier is inside allreduce_mean.
    # Sleep-wait on it (spin_seconds=0) so idle workers never steal a core from the
    # coordinator's baseline measurements; the wake-up latency counts against us.
    control = SpinBarrier(arena["control"], ctx.rank, spin_seconds=0.0)
    slots, out, stop = arena["slots"], arena["out"], arena["stop"]
    slots[ctx.rank] = ctx.rank + 1.0
    while True:
        control.wait()
        if stop[0]:
            break
        allreduce_mean(slots, out, ctx.rank, ctx.barrier)
        control.wait()
    del slots, out, stop, control
    arena.close()
    ctx.send("done")


class AllreducePool:
    """Workers that average ``n_floats`` in shared memory each time :meth:`run` is
    called; the call returns when every worker has finished that allreduce."""

    def __init__(self, n_floats: int, workers: int) -> None:
        self.workers = workers
        self.arena = SharedArena.create(
            {
                "slots": ((workers, n_floats), np.float32),
                "out": ((n_floats,), np.float32),
                "control": (barrier_shape(workers + 1), np.int64),
                "stop": ((1,), np.int64),
            }
        )
        # spin_seconds=0: the coordinator sleeps while it waits, leaving the cores to
        # the workers (its 100 us wake-up granularity is part of the measured time).
        self.control = SpinBarrier(self.arena["control"], workers, spin_seconds=0.0)
        self.pool = WorkerPool(workers, _allreduce_worker, (self.arena.spec,))

    def __enter__(self) -> AllreducePool:
        self.pool.__enter__()
        return self

    def run(self) -> None:
        self.control.wait()
        self.control.wait()

    def result(self) -> np.ndarray:
        return self.arena["out"]

    def __exit__(self, *exc) -> None:
        try:
            self.arena["stop"][0] = 1
            self.control.wait()
            self.pool.join()
        finally:
            self.pool.__exit__(*exc)
            self.control = None
            self.arena.close()


def median_seconds(fn, repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(results: dict[str, dict], json_path: str | None) -> None:
    """One line per result (floats rounded), and the whole as JSON to ``json_path``."""
    for name, row in results.items():
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(results, fh, indent=2)
