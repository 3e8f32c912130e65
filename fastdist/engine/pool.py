"""Spawn-context worker processes supervised by the coordinator: :class:`WorkerPool`
starts them, relays their messages, notices failures and shuts them down.

Workers get their arrays from the shared arena; the pipes here carry only small control
messages (ready, progress, done, error). The coordinator waits on the pipes and on the
process sentinels together, so a worker that dies, even by SIGKILL, is noticed at once:
the barrier is aborted, the survivors are stopped, and a one-line :class:`WorkerError`
is raised. Nothing waits without a way out.

A worker that is alive but makes no progress (stopped with SIGSTOP, stuck in a
deadlock) never closes a pipe, so workers also beat a heartbeat in the pool's segment
(at every step and while waiting at the barrier); one that stays silent longer than the
pool's ``worker_timeout`` is killed and reported like a dead one (see
:class:`Liveness`).

The worker's side lives elsewhere: :mod:`~fastdist.engine.bootstrap` (its start-up and
end), :mod:`~fastdist.engine.worker_context` (what it receives) and
:mod:`~fastdist.engine.worker_errors` (how its failure reaches the coordinator).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from fastdist.engine.barrier import SpinBarrier, barrier_shape
from fastdist.engine.bootstrap import bootstrap
from fastdist.engine.liveness import Liveness, heartbeat_shape
from fastdist.engine.shm import SharedArena
from fastdist.engine.signals import deferred_signals
from fastdist.engine.spawning import cpu_sets, standard_start_method
from fastdist.engine.threads import environment, thread_env
from fastdist.engine.worker_errors import describe_exit, worker_failure
from fastdist.errors import WorkerError

__all__ = ["WorkerPool"]

_GRACE_SECONDS = 1.0


class WorkerPool:
    """``n_workers`` processes running ``target(ctx, *args)``; use as a context manager.

    ``threads`` BLAS/Numba/XLA threads per worker are pinned through the environment
    the worker starts with (see :mod:`fastdist.engine.threads`).
    """

    def __init__(
        self,
        n_workers: int,
        target: Callable,
        args: tuple = (),
        threads: int = 1,
        extra_env: dict[str, str] | None = None,
        pin_cpus: bool = False,
        worker_timeout: float | None = None,
    ) -> None:
        if n_workers < 1:
            raise ValueError(f"a pool needs at least one worker, got {n_workers}")
        self.n_workers = n_workers
        self._ctx = mp.get_context("spawn")
        # The barrier and the heartbeats live in a small segment of the pool's own, so
        # the pool works with or without a data arena.
        self._sync = SharedArena.create(
            {
                "barrier": (barrier_shape(n_workers), np.int64),
                "heartbeat": (heartbeat_shape(n_workers), np.int64),
            }
        )
        self.barrier = SpinBarrier(self._sync["barrier"], rank=None)
        self.liveness = Liveness(self._sync["heartbeat"], worker_timeout)
        self._target, self._args = target, args
        self._env = {**thread_env(threads), **(extra_env or {})}
        self._cpus = cpu_sets(n_workers, threads) if pin_cpus else [None] * n_workers
        self._procs: list[mp.Process] = []
        self._conns: list[Connection] = []

    def start(self) -> None:
        # Children inherit a blocked SIGINT through fork and exec, so a Ctrl-C during
        # their start-up cannot print a traceback from them (they ignore it and unblock
        # it in bootstrap). Here it is held back, not ignored: delivered once every
        # worker has been started (a KeyboardInterrupt between spawning a child and
        # sending it its start-up data would leave that child reading a closed pipe).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with deferred_signals():
                self._start_all()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _start_all(self) -> None:
        with environment(self._env), standard_start_method():
            for rank in range(self.n_workers):
                recv, send = self._ctx.Pipe(duplex=False)
                proc = self._ctx.Process(
                    target=bootstrap,
                    args=(
                        self._target,
                        rank,
                        self.n_workers,
                        self._args,
                        send,
                        self._sync.spec,
                        self._cpus[rank],
                        os.getpid(),
                    ),
                    name=f"fastdist-worker-{rank}",
                    daemon=True,
                )
                proc.start()
                self._procs.append(proc)  # at once: a Ctrl-C may stop the loop here
                send.close()  # the worker holds the only writer: EOF means it is gone
                self._conns.append(recv)

    def join(
        self,
        on_message: Callable[[str, int, Any], None] | None = None,
        tolerate_failures: bool = False,
    ) -> dict[int, Any]:
        """Relay messages until every worker has sent ``done``; return their payloads.

        Raises :class:`WorkerError` as soon as one worker reports an error or dies,
        unless ``tolerate_failures``: then the failed worker is excluded from the
        barrier, its payload is ``{"failed": cause}``, and the others carry on (an
        error is still raised if none is left).
        """
        results: dict[int, Any] = {}
        conn_rank = {id(c): r for r, c in enumerate(self._conns)}
        sentinel_rank = {p.sentinel: r for r, p in enumerate(self._procs)}
        while len(results) < self.n_workers:
            live = [c for r, c in enumerate(self._conns) if r not in results and not c.closed]
            sentinels = [p.sentinel for r, p in enumerate(self._procs) if r not in results]
            ready = wait(live + sentinels, timeout=self.liveness.poll_seconds)
            silent = self.liveness.silent_worker(set(results))
            if silent is not None:
                # Stopped or stuck: kill it (SIGKILL works on a stopped process too),
                # then it is a dead worker like any other, under the same policy.
                rank, message = silent
                self._procs[rank].kill()
                self._procs[rank].join(_GRACE_SECONDS)
                self.liveness.forget(rank)
                if not tolerate_failures:
                    raise WorkerError(message)
                self.barrier.exclude(rank)
                results[rank] = {"failed": message}
                continue
            for obj in ready:
                rank = conn_rank[id(obj)] if isinstance(obj, Connection) else sentinel_rank[obj]
                if rank in results:
                    continue
                try:
                    self._drain(rank, results, on_message)
                    if not isinstance(obj, Connection) and rank not in results:
                        self._procs[rank].join(_GRACE_SECONDS)
                        raise WorkerError(
                            f"worker {rank} {describe_exit(self._procs[rank].exitcode)} "
                            "before finishing"
                        )
                except WorkerError as exc:
                    if not tolerate_failures:
                        raise
                    self.barrier.exclude(rank)
                    results[rank] = {"failed": str(exc)}
        if tolerate_failures and all("failed" in r for r in results.values()):
            raise WorkerError(f"every worker failed; the last: {results[self.n_workers - 1]}")
        return results

    def _drain(self, rank: int, results: dict, on_message) -> None:
        conn = self._conns[rank]
        while not conn.closed and conn.poll():
            try:
                kind, _, payload = conn.recv()
            except (EOFError, OSError):
                conn.close()
                return
            if kind == "done":
                results[rank] = payload
            elif kind == "error":
                raise worker_failure(rank, payload)
            elif on_message is not None:
                on_message(kind, rank, payload)

    def shutdown(self) -> None:
        """Abort the barrier, give workers a grace period, then terminate and kill."""
        if self.barrier is None:
            return  # already shut down
        self.barrier.abort()
        deadline = time.monotonic() + _GRACE_SECONDS
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(_GRACE_SECONDS)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self.barrier = None
        self._sync.close()

    def __enter__(self) -> WorkerPool:
        try:
            self.start()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        # Cleanup must finish even if a (second) Ctrl-C arrives while it runs, on any
        # thread: the signal is held back and delivered afterwards.
        with deferred_signals():
            self.shutdown()
