"""Peer: the data-parallel recipe done naively with multiprocessing pipes and pickle.

``workers`` spawned processes (1 BLAS thread each) hold their own shard of the data.
Every step the coordinator sends the current weights, pickled, down a pipe to each
worker; each worker computes the mean cross-entropy gradient of one ``batch``-row batch
with NumPy and sends it back, pickled; the coordinator averages the gradients and applies
momentum SGD. This is the cost fastdist avoids by sharing memory instead of pickling.
"""

from __future__ import annotations

import contextlib
import time
import traceback

import numpy as np

from benchmarks.peers import _common

NAME = "naive_pool"
TIMEOUT_S = 900.0


def available() -> bool:
    return True  # NumPy and multiprocessing only


def loss_and_grad(params, x: np.ndarray, y: np.ndarray):
    """Mean softmax cross-entropy of the ReLU MLP ``params`` = [(W, b), ...] on (x, y),
    and its gradient as [(dW, db), ...] (float32, W of shape (fan_in, fan_out))."""
    n = x.shape[0]
    acts = [x]
    h = x
    for w, b in params[:-1]:
        h = h @ w
        h += b
        np.maximum(h, 0.0, out=h)
        acts.append(h)
    w, b = params[-1]
    logits = h @ w
    logits += b
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    probs = logits
    rows = np.arange(n)
    loss = float(-np.mean(np.log(np.maximum(probs[rows, y], 1e-30))))
    delta = probs
    delta[rows, y] -= 1.0
    delta *= np.float32(1.0 / n)
    grads = [None] * len(params)
    for layer in range(len(params) - 1, -1, -1):
        a = acts[layer]
        grads[layer] = (a.T @ delta, delta.sum(axis=0))
        if layer > 0:
            delta = delta @ params[layer][0].T
            delta *= acts[layer] > 0
    return loss, grads


def _worker(conn, rank, workers, batch, sizes, seed) -> None:
    _common.die_with_parent()
    try:
        x, y = _common.make_data(workers, batch, sizes, seed)
        data = _common.batches(*_common.shard(x, y, rank, workers), batch)
        del x, y
        conn.send(("ready", None))
        while True:
            msg = conn.recv()
            if msg is None:
                break
            i, params = msg
            bx, by = data[i % len(data)]
            _, grads = loss_and_grad(params, bx, by)
            conn.send(("grad", grads))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    except BaseException:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _receive(conn, proc, deadline: float):
    while not conn.poll(0.5):
        if not proc.is_alive():
            raise RuntimeError(f"{NAME}: worker {proc.name} died (exit code {proc.exitcode})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{NAME}: worker {proc.name} did not answer in time")
    try:
        kind, payload = conn.recv()
    except EOFError as e:
        raise RuntimeError(f"{NAME}: worker {proc.name} closed its pipe") from e
    if kind == "error":
        raise RuntimeError(f"{NAME}: worker {proc.name} failed:\n{payload}")
    return payload


def run(
    steps: int,
    warmup: int,
    workers: int,
    batch: int = 256,
    sizes=_common.DEFAULT_SIZES,
    seed: int = 0,
    timeout: float = TIMEOUT_S,
) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    deadline = time.monotonic() + timeout
    procs, conns = [], []
    try:
        with _common.patched_env(_common.SINGLE_THREAD_ENV):
            for rank in range(workers):
                parent_end, child_end = ctx.Pipe(duplex=True)
                p = ctx.Process(
                    target=_worker,
                    args=(child_end, rank, workers, batch, tuple(sizes), seed),
                    name=f"naive-{rank}",
                    daemon=True,
                )
                p.start()
                child_end.close()
                procs.append(p)
                conns.append(parent_end)
        for c, p in zip(conns, procs):
            _receive(c, p, deadline)

        params = _common.init_weights(sizes, seed)
        velocity = [(np.zeros_like(w), np.zeros_like(b)) for w, b in params]
        lr, mu = np.float32(_common.LR), np.float32(_common.MOMENTUM)
        scale = np.float32(1.0 / workers)

        def train(start: int, n: int) -> None:
            for i in range(start, start + n):
                for c in conns:
                    c.send((i, params))  # pickles the weights once per worker
                grads = [_receive(c, p, deadline) for c, p in zip(conns, procs)]
                for layer, ((w, b), (vw, vb)) in enumerate(zip(params, velocity)):
                    for p_, v_, k in ((w, vw, 0), (b, vb, 1)):
                        g = grads[0][layer][k].copy()
                        for other in grads[1:]:
                            g += other[layer][k]
                        g *= scale
                        v_ *= mu
                        v_ += g
                        p_ -= lr * v_

        train(0, warmup)
        t0 = time.perf_counter()
        train(warmup, steps)
        seconds = time.perf_counter() - t0
        for c in conns:
            c.send(None)
        for p in procs:
            p.join(10)
        param_bytes = sum(w.nbytes + b.nbytes for w, b in params)
        return _common.result(
            NAME,
            workers,
            steps,
            seconds,
            batch * workers,
            threads_per_worker=1,
            # weights out to and gradients back from every worker, each step
            pickled_bytes_per_step=2 * workers * param_bytes,
        )
    finally:
        for c in conns:
            c.close()
        _common.reap(procs)


if __name__ == "__main__":
    _common.cli(run, available, __doc__.splitlines()[0])
