"""Pieces every peer shares: the W1 data and initial weights, the result dict, the CLI.

Every peer trains the same reference workload as fastdist (see README.md): the data come
from :func:`fastdist.data.make_synthetic` (seed ``seed``) and the initial weights from
:meth:`fastdist.models.mlp.MLP.init` (He-uniform, zero biases), so the peers start from the
same point as fastdist and from each other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator

import numpy as np

from benchmarks.child_env import thread_pins

DEFAULT_SIZES = (784, 1024, 1024, 10)
LR = 0.01
MOMENTUM = 0.9
# Each worker cycles over this many distinct batches of its shard: enough that the step
# does not run on one cache-hot batch, small enough to keep setup fast (2 workers at batch
# 256 is 2 * 16 * 256 * 784 * 4 bytes = 25 MiB).
BATCHES_PER_WORKER = 16
# One BLAS / OpenMP thread per process for the multi-process peers; set in the parent's
# environment around process creation (spawned children read it before loading BLAS).
SINGLE_THREAD_ENV = thread_pins(1)


def make_data(
    workers: int, batch: int, sizes=DEFAULT_SIZES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The whole data set for ``workers`` workers: ``BATCHES_PER_WORKER`` batches each."""
    from fastdist.data.datasets import make_synthetic

    n = workers * batch * BATCHES_PER_WORKER
    return make_synthetic(n, n_features=sizes[0], n_classes=sizes[-1], seed=seed)


def shard(x: np.ndarray, y: np.ndarray, rank: int, workers: int):
    """Rank ``rank``'s contiguous shard (workers get equal shards: n is a multiple)."""
    n = x.shape[0] // workers
    return x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]


def batches(x: np.ndarray, y: np.ndarray, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The shard cut into ``batch``-row contiguous batches (copies, so each is C-contiguous)."""
    return [
        (np.ascontiguousarray(x[i : i + batch]), np.ascontiguousarray(y[i : i + batch]))
        for i in range(0, x.shape[0] - batch + 1, batch)
    ]


def init_weights(sizes=DEFAULT_SIZES, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """fastdist's initial parameters as (W of shape (fan_in, fan_out), b) per layer."""
    from fastdist.models.mlp import MLP

    layout = MLP(tuple(sizes))
    flat = layout.init(seed)
    return [
        (layout.weight(flat, i).copy(), layout.bias(flat, i).copy()) for i in range(layout.n_layers)
    ]


def result(
    peer: str,
    workers: int,
    steps: int,
    seconds: float,
    global_batch: int,
    **extra,
) -> dict:
    out = {
        "peer": peer,
        "workers": int(workers),
        "samples_per_second": float(global_batch * steps / seconds),
        "seconds": float(seconds),
        "steps": int(steps),
        "global_batch": int(global_batch),
    }
    out.update(extra)
    return out


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bound to port 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (children started inside inherit them),
    then restore the caller's environment, so a peer leaves no thread pin behind."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def cli(run, available, description: str, extra_args=None) -> None:
    """``python -m benchmarks.peers.X [--steps N --warmup N --workers N ...]`` -> JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sizes", type=lambda s: tuple(int(v) for v in s.split(",")), default=DEFAULT_SIZES
    )
    for args, kwargs in extra_args or ():
        parser.add_argument(*args, **kwargs)
    ns = vars(parser.parse_args())
    if not available():
        print(json.dumps({"available": False}))
        sys.exit(2)
    print(json.dumps(run(**ns), indent=2))


def die_with_parent() -> None:
    """In a child process: ask Linux to SIGKILL us when our parent dies, so a killed
    benchmark leaves no orphan spinning in a collective (no-op off Linux)."""
    import ctypes
    import multiprocessing
    import signal

    parent = multiprocessing.parent_process()

    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)  # the parent died before the prctl took effect


def reap(processes, grace: float = 5.0) -> None:
    """Terminate, then kill, every process in ``processes`` still alive, and join it."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(grace)
        if p.is_alive():
            p.kill()
            p.join(grace)
