"""CPU time, not wall time, of the JAX backend against JAX-native (issue 15, item 1),
and the ceiling of any two single-threaded XLA workers.

On a shared machine, wall-clock ratios of a 2-process synchronous run against one
process swing with the load; the CPU time a step consumes does not (much). Three views:

    python -m benchmarks.jax_cpu kernel [--workload w1|w3]
    python -m benchmarks.jax_cpu runs [--workload w1|w3] [--rounds 2]
    python -m benchmarks.jax_cpu ceiling [--rounds 3]

``kernel``: one process pinned to one CPU; CPU ms per call of fastdist's JAX and Numba
kernels (gradient copy out included) and, for W1, of each matmul of the MLP's forward
and backward pass in XLA and in NumPy (OpenBLAS, 1 thread).

``runs``: marginal CPU per global step of ``fastdist backend=jax workers=2`` and of the
JAX peer in one process on all cores (``jax_single``): the CPU of all child processes
for a long run minus a short one, over the step difference, so start-up and compilation
cancel. The fastdist side includes the barriers' spinning (up to 5 ms a wait), so load
and imbalance inflate it; "CPU efficiency" is peer / fastdist.

``ceiling`` (W1, wall time): two independent JAX peer trainings started together, each
pinned to one core with one XLA thread, against one JAX process on all cores. Their sum
bounds what 2 workers running XLA single-threaded can reach, before any exchange.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.child_env import ROOT, child_env

_STEPS = {"w1": (20, 120), "w3": (20, 220)}  # short and long run
_GLOBAL_BATCH = {"w1": 512, "w3": 128}


def _cpu_ms(fn, calls: int = 30) -> float:
    for _ in range(3):
        fn()
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e3


def kernel(workload: str) -> None:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[-1:])
    from fastdist.models.kernels.jax_mlp import configure_jax_threads

    os.environ.update(configure_jax_threads(1))  # before JAX is imported
    import numpy as np
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # NumPy is loaded already: cap its BLAS pool directly

    if workload == "w1":
        from fastdist.models.mlp import MLP

        model, batch = MLP((784, 1024, 1024, 10)), 256
    else:
        from benchmarks.peers.cnn_peers import w3_model

        model, batch = w3_model(), 64
    rng = np.random.default_rng(0)
    params = model.init(0)  # a fresh NumPy array: 64-byte aligned, so XLA aliases it
    x = rng.standard_normal((batch, model.n_inputs), dtype=np.float32)
    y = rng.integers(0, model.n_classes, batch).astype(np.int32)
    grad = np.empty_like(params)
    for backend in ("jax", "numba"):
        k = model.kernel(backend, batch)
        ms = _cpu_ms(lambda k=k: k.loss_and_grad(params, x, y, grad))
        print(f"{workload} {backend} kernel, batch {batch}: {ms:.2f} CPU ms per call")
    if workload != "w1":
        return
    import jax

    def a(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    xs, h, dz, w1, w2 = a(256, 784), a(256, 1024), a(256, 1024), a(784, 1024), a(1024, 1024)
    dots = {
        "x @ w1": (lambda p, q: p @ q, xs, w1),
        "h @ w2": (lambda p, q: p @ q, h, w2),
        "h.T @ dz (dW2)": (lambda p, q: p.T @ q, h, dz),
        "dz @ w2.T (dh)": (lambda p, q: p @ q.T, dz, w2),
        "x.T @ dz (dW1)": (lambda p, q: p.T @ q, xs, dz),
    }
    total = [0.0, 0.0]
    for name, (f, p, q) in dots.items():
        jf, pd, qd = jax.jit(f), jax.device_put(p), jax.device_put(q)
        xla = _cpu_ms(lambda jf=jf, pd=pd, qd=qd: jax.block_until_ready(jf(pd, qd)))
        blas = _cpu_ms(lambda f=f, p=p, q=q: f(p, q))
        total = [total[0] + xla, total[1] + blas]
        print(f"  {name:16s} XLA {xla:.2f} ms, NumPy/OpenBLAS {blas:.2f} ms")
    print(f"  {'all five':16s} XLA {total[0]:.2f} ms, NumPy/OpenBLAS {total[1]:.2f} ms")


def _children_cpu(cmd: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = child_env()  # the children import fastdist and the peers from the checkout
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=env, timeout=1800)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _commands(workload: str, steps: int, run_dir: str) -> dict[str, list[str]]:
    py = sys.executable
    fastdist = [py, "-m", "fastdist", f"experiment={workload}", "workers=2", f"steps={steps}"]
    fastdist += ["backend=jax", "diagnostics=false", f"hydra.run.dir={run_dir}"]
    if workload == "w1":
        peer = [py, "-m", "benchmarks.peers.jax_single", "--batch", "256"]
        peer += ["--sizes", "784,1024,1024,10", "--warmup", "5"]
    else:
        peer = [py, "-m", "benchmarks.peers.cnn_peers", "jax_single", "--warmup", "3"]
    peer += ["--steps", str(steps), "--workers", "2"]
    return {"fastdist backend=jax 2w": fastdist, "JAX 1 process all cores": peer}


def runs(workload: str, rounds: int) -> None:
    short, long = _STEPS[workload]
    per_step: dict[str, list[float]] = {}
    for r in range(rounds):
        for name in _commands(workload, short, ""):
            with tempfile.TemporaryDirectory() as tmp:  # fastdist's run directory
                cpu_short = _children_cpu(_commands(workload, short, tmp)[name])
                cpu_long = _children_cpu(_commands(workload, long, tmp)[name])
            ms = (cpu_long - cpu_short) / (long - short) * 1e3
            per_step.setdefault(name, []).append(ms)
            load = os.getloadavg()[0]
            print(
                f"round {r + 1} {name}: {ms:.1f} CPU ms per global step of "
                f"{_GLOBAL_BATCH[workload]} (load {load:.1f})",
                flush=True,
            )
    ours, peer = (statistics.median(v) for v in per_step.values())
    print(
        f"{workload}: median {ours:.1f} vs {peer:.1f} CPU ms per step, "
        f"CPU efficiency {peer / ours:.2f}x"
    )


# One JAX peer process pinned to ``cpu`` (-1: not pinned, XLA's default threading): it
# compiles and warms up, waits for the common start time, then trains and prints its
# result (JSON) on its last line.
_PINNED_PEER = """
import json, os, sys, time
cpu, steps, workers = (int(a) for a in sys.argv[1:4])
start_at = float(sys.argv[4])
if cpu >= 0:
    os.sched_setaffinity(0, [cpu])
    from fastdist.models.kernels.jax_mlp import configure_jax_threads
    os.environ.update(configure_jax_threads(1))
from benchmarks.peers import jax_single
jax_single.run(steps=5, warmup=3, workers=workers)
time.sleep(max(0.0, start_at - time.time()))
print(json.dumps(jax_single.run(steps=steps, warmup=3, workers=workers)))
"""


def _peers_at_once(args: list[tuple[int, int]], steps: int) -> list[float]:
    """samples/s of JAX peer processes started together, one per (cpu, workers)."""
    env = child_env()  # the children import fastdist and the peers from the checkout
    start_at = str(time.time() + 15)  # after every process has compiled
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PINNED_PEER, str(cpu), str(steps), str(workers), start_at],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for cpu, workers in args
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return [json.loads(out.strip().splitlines()[-1])["samples_per_second"] for out in outs]


def ceiling(rounds: int, steps: int = 150) -> None:
    """W1's ceiling for two single-threaded XLA workers: two independent JAX trainings,
    one pinned per core (batch 256 each, the peer's fused step, nothing exchanged),
    against one JAX process on both cores (batch 512), interleaved. The pair's sum is an
    upper bound, up to noise, for any data-parallel design whose 2 workers run XLA on
    one thread each: they do the same work and exchange nothing."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    single, pair = [], []
    for r in range(rounds):
        single += _peers_at_once([(-1, 2)], steps)
        pair.append(sum(_peers_at_once([(cpus[0], 1), (cpus[-1], 1)], steps)))
        print(
            f"round {r + 1}: one process all cores {single[-1]:,.0f}, two pinned "
            f"single-thread processes {pair[-1]:,.0f} samples/s",
            flush=True,
        )
    ratio = statistics.median(pair) / statistics.median(single)
    print(f"w1: ceiling of 2 single-threaded XLA workers = {ratio:.2f}x JAX on all cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("kernel", "runs", "ceiling"))
    parser.add_argument("--workload", choices=("w1", "w3"), default="w1")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.what == "kernel":
        kernel(args.workload)
    elif args.what == "ceiling":
        ceiling(max(args.rounds, 3))
    else:
        runs(args.workload, args.rounds)


if __name__ == "__main__":
    main()
