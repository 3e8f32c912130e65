"""Hierarchical allreduce (shared memory inside a node, MPI across nodes) against a
flat MPI Allreduce and the pure shared-memory one, 1M and 10M float32.

    mpirun -n 2 --oversubscribe python -m benchmarks.hierarchical_allreduce [--workers 1]

Each rank plays a node: its workers average their rows in shared memory (the pool of
``benchmarks.harness.AllreducePool``), then the node coordinator allreduces the
node mean in place on the arena buffer with MPI, as ``dist=mpi`` training does. The
flat variant allreduces every worker's full vector through MPI from the ranks
themselves. Rank 0 prints medians as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.harness import AllreducePool

# mpi4py is imported inside the functions, never at module level: spawned workers
# re-import this (main) module, and a child that initialises MPI with its parent's
# launcher environment joins the job as a second copy of the same rank.


def _median(fn, repeats: int, warmup: int, comm) -> float:
    from mpi4py import MPI

    times = []
    for i in range(warmup + repeats):
        comm.Barrier()
        start = time.perf_counter()
        fn()
        elapsed = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
        if i >= warmup:
            times.append(elapsed)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="workers per node")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    scale = np.float32(1.0 / comm.Get_size())
    results = []
    for n_floats in (1_000_000, 10_000_000):
        flat = np.ones(n_floats, np.float32)

        def flat_allreduce(flat=flat):
            comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
            np.multiply(flat, scale, out=flat)

        with AllreducePool(n_floats, workers=args.workers) as pool:
            node_mean = pool.result()

            def hierarchical(pool=pool, node_mean=node_mean):
                pool.run()  # node mean in shared memory
                comm.Allreduce(MPI.IN_PLACE, node_mean, op=MPI.SUM)
                np.multiply(node_mean, scale, out=node_mean)

            row = {
                "n_floats": n_floats,
                "ranks": comm.Get_size(),
                "workers_per_rank": args.workers,
                "hierarchical_ms": 1e3 * _median(hierarchical, args.repeats, args.warmup, comm),
                "flat_mpi_ms": 1e3 * _median(flat_allreduce, args.repeats, args.warmup, comm),
                "shared_memory_only_ms": 1e3 * _median(pool.run, args.repeats, args.warmup, comm),
            }
        results.append(row)
    if comm.Get_rank() == 0:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
