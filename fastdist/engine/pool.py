"""Spawn-context worker processes supervised by the coordinator.

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
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from fastdist.engine.barrier import SpinBarrier, barrier_shape
from fastdist.engine.liveness import Liveness, heartbeat_shape
from fastdist.engine.shm import ArenaSpec, SharedArena
from fastdist.engine.signals import deferred_signals
from fastdist.engine.threads import environment, thread_env
from fastdist.errors import FastdistError, WorkerError

__all__ = ["WorkerPool", "WorkerContext", "RemoteTraceback"]

_PR_SET_PDEATHSIG = 1
_GRACE_SECONDS = 1.0


@dataclass
class WorkerContext:
    """What a worker function receives besides its rank and its own arguments."""

    rank: int
    n_workers: int
    barrier: SpinBarrier  # shared by the workers; the coordinator can abort it
    _conn: Connection
    _heartbeat: np.ndarray | None = None  # this worker's row of the pool's heartbeats
    _last_step_ns: int = 0
    _slowest_ns: int = 0

    def send(self, kind: str, payload: Any = None) -> None:
        """A small control message to the coordinator (never an array)."""
        self._conn.send((kind, self.rank, payload))

    def heartbeat(self, step: int) -> None:
        """``step`` steps are done: tell the coordinator this worker is making progress
        (a few array stores; call it once per step)."""
        beat = self._heartbeat
        if beat is None:
            return
        now = time.monotonic_ns()
        if self._last_step_ns:
            took = now - self._last_step_ns
            if took > self._slowest_ns:  # rare: written only when it grows
                self._slowest_ns = beat[3] = took
        else:
            beat[2] = 1  # stepping: past imports and compilation
        self._last_step_ns = now
        beat[1] = step
        beat[0] = now


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker if the coordinator dies, so a killed coordinator
    leaves no orphan computing into a segment nobody reads.

    ``parent`` is the coordinator's pid as it recorded it when spawning: comparing with
    it (not with 1) also works when the coordinator itself is PID 1, as in a container.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _bootstrap(
    target: Callable,
    rank: int,
    n_workers: int,
    args: tuple,
    conn,
    sync_spec: ArenaSpec,
    cpus: tuple[int, ...] | None,
    parent: int,
) -> None:
    # Ctrl-C reaches the whole process group; only the coordinator decides what it means.
    # The child started with SIGINT blocked (WorkerPool.start): ignoring it discards one
    # that arrived meanwhile, and only then is it unblocked.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent(parent)
    if cpus:
        # Before any math library starts its threads: XLA sizes its pool from this set.
        os.sched_setaffinity(0, cpus)
    sync = SharedArena.attach(sync_spec)
    beat = sync["heartbeat"][rank]
    beat[0] = time.monotonic_ns()
    barrier = SpinBarrier(sync["barrier"], rank, heartbeat=beat)
    ctx = WorkerContext(rank, n_workers, barrier, conn, beat)
    try:
        target(ctx, *args)
    except threading.BrokenBarrierError:
        # The coordinator aborted the barrier because another worker failed; it already
        # knows why, so leave quietly.
        os._exit(1)
    except BaseException as exc:  # report everything, including SystemExit from user code
        # Expected failures keep their type (the CLI maps it to an exit code); anything
        # else is reported as "Type: first line". The worker's traceback travels along
        # and becomes the coordinator's exception's __cause__ (as loky does).
        expected = isinstance(exc, FastdistError)
        detail = {
            "type": type(exc).__name__ if expected else "",
            "message": str(exc).strip().splitlines()[0] if expected else _one_line(exc),
            "traceback": traceback.format_exc(),
        }
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("error", rank, detail))
        os._exit(1)
    finally:
        conn.close()
        del ctx
        sync.close()


class RemoteTraceback(Exception):
    """A worker's traceback, attached as the ``__cause__`` of the error it raised."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


def _worker_failure(rank: int, detail: dict) -> FastdistError:
    """Re-create a worker's expected error in the coordinator (same type, rank named)."""
    from fastdist import errors

    cls = getattr(errors, detail["type"], None) if detail["type"] else None
    if isinstance(cls, type) and issubclass(cls, FastdistError):
        error = cls(f"worker {rank}: {detail['message']}")
    else:
        error = WorkerError(f"worker {rank} failed: {detail['message']}")
    error.__cause__ = RemoteTraceback(detail.get("traceback", ""))
    return error


@contextlib.contextmanager
def _standard_start_method():
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


def _cpu_sets(n_workers: int, threads: int) -> list[tuple[int, ...]]:
    """``threads`` CPUs per worker, round-robin over the CPUs this process may use
    (workers share CPUs only when workers x threads exceeds them)."""
    available = sorted(os.sched_getaffinity(0))
    return [
        tuple(sorted({available[(rank * threads + i) % len(available)] for i in range(threads)}))
        for rank in range(n_workers)
    ]


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


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
        self._cpus = _cpu_sets(n_workers, threads) if pin_cpus else [None] * n_workers
        self._procs: list[mp.Process] = []
        self._conns: list[Connection] = []

    def start(self) -> None:
        # Children inherit a blocked SIGINT through fork and exec, so a Ctrl-C during
        # their start-up cannot print a traceback from them (they ignore it and unblock
        # it in _bootstrap). Here it is held back, not ignored: delivered once every
        # worker has been started (a KeyboardInterrupt between spawning a child and
        # sending it its start-up data would leave that child reading a closed pipe).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with deferred_signals():
                self._start_all()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _start_all(self) -> None:
        with environment(self._env), _standard_start_method():
            for rank in range(self.n_workers):
                recv, send = self._ctx.Pipe(duplex=False)
                proc = self._ctx.Process(
                    target=_bootstrap,
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
                            f"worker {rank} {_describe_exit(self._procs[rank].exitcode)} "
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
                raise _worker_failure(rank, payload)
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
