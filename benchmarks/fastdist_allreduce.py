"""fastdist's shared-memory allreduce alone, with the same CLI and output shape as the
peers' (``benchmarks/peers/allreduce_peers.py``), so the comparison runs each in a fresh
process: ``python -m benchmarks.fastdist_allreduce --n-floats 10000000 --world 2``."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.harness import AllreducePool


def run(n_floats: int, world: int = 2, repeats: int = 20, warmup: int = 3) -> dict:
    times = []
    with AllreducePool(n_floats, workers=world) as pool:
        for i in range(warmup + repeats):
            start = time.perf_counter()
            pool.run()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        ok = bool(np.allclose(pool.result(), (world + 1) / 2))
    return {
        "impl": "fastdist_shm",
        "n_floats": n_floats,
        "world": world,
        "median_seconds": float(np.median(times)),
        "min_seconds": float(np.min(times)),
        "correct": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-floats", type=int, default=10_000_000)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.n_floats, args.world, args.repeats, args.warmup), indent=2))


if __name__ == "__main__":
    main()
