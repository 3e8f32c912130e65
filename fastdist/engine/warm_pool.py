"""A worker pool that outlives one job.

Each worker of a :class:`WarmPool` runs :func:`serve_jobs`: a loop that waits on its
own pipe for a job (a picklable target and its arguments), runs it exactly as a
one-shot :class:`~fastdist.engine.pool.WorkerPool` would, and waits for the next. The
processes, their imports and whatever they compiled stay loaded between jobs; what a
job shares (its arena) is named in the job's arguments and attached by the target, so
every job can bring its own segment.

A job starts only once every worker has taken it: each answers ``accepted`` and
waits for ``start``. An idle worker can be killed from outside, and SIGKILL takes
effect asynchronously, so no check made before handing a job out can prove the worker
will run it; its answer does. A worker that dies (or stays silent) before answering
raises :class:`WarmPoolLost`: nothing of that job ran anywhere, so the owner may run it
again, unchanged, on a fresh pool.

Once started, the job is supervised by the same :meth:`WorkerPool.join` as a one-shot
pool: an error or a death ends it with the same one-line error. A pool that saw any
failure must not run another job (its barrier may be aborted or a worker excluded):
:attr:`WarmPool.usable` turns false and the owner shuts it down.

Workers are started without re-running the parent's ``__main__`` (when the job does
not need it): under the ``fastdist`` console script that re-import would load the
whole CLI (Hydra, OmegaConf) into every worker.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from typing import Any

from fastdist.engine.pool import WorkerPool
from fastdist.engine.worker_errors import describe_exit, worker_failure
from fastdist.errors import WorkerError

__all__ = ["WarmPool", "WarmPoolLost", "serve_jobs", "main_module_hidden"]

_START = "start"  # sent to every worker once all of them have accepted the job
_GRACE_SECONDS = 1.0


class WarmPoolLost(WorkerError):
    """A worker died or stopped before it took the job handed to it. No worker started
    that job, so it can run again, unchanged, on a fresh pool."""


def _next_message(inbox) -> Any:
    """The next message on ``inbox``; None also when the coordinator's end is closed."""
    try:
        return inbox.recv()
    except (EOFError, OSError):
        return None


def _leave() -> None:
    """Dismissed: leave at once. The job's arena is detached and the pipes carry nothing
    more; finalizing an interpreter that loaded LLVM and BLAS takes most of a second
    that the coordinator would spend waiting."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def serve_jobs(ctx, inboxes: tuple, preload: tuple[str, ...] = ()) -> None:
    """A warm worker's life: import ``preload``, then run each job received on its own
    inbox, once the coordinator says ``start``, until ``None`` (or the coordinator's end
    of the pipe closes)."""
    inbox = inboxes[ctx.rank]
    for other in inboxes:
        if other is not inbox:
            other.close()  # the other workers' inboxes are theirs
    for module in preload:
        # What the jobs will import anyway, imported before the first one arrives: a
        # pool started ahead of its jobs does it while the coordinator prepares them.
        importlib.import_module(module)
    while True:
        job = _next_message(inbox)
        if job is None:
            _leave()
        ctx.begin_job()  # the idle time since the last job is not silence
        ctx.send("accepted")
        if _next_message(inbox) != _START:
            _leave()  # another worker was lost: this job runs elsewhere
        target, args = job
        target(ctx, *args)
        del job, target, args  # nothing of a finished job stays referenced


@contextlib.contextmanager
def main_module_hidden(payload: Any) -> Iterator[None]:
    """Start spawn children without re-importing the parent's main script, unless
    ``payload`` (what the children will unpickle) refers to ``__main__``.

    ``spawn`` re-runs the parent's main file in every child so that functions defined
    there can be unpickled; for a console script that means importing the whole CLI.
    Children started inside this block skip that when nothing they receive needs it.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None:
        yield  # ``python -m pkg`` (spawn already skips *.__main__) or an interpreter
        return
    try:
        needs_main = b"__main__" in pickle.dumps(payload)
    except Exception:
        needs_main = True  # let multiprocessing report what cannot be pickled
    if needs_main:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


class WarmPool:
    """``n_workers`` long-lived workers; :meth:`run` one job at a time on all of them.

    ``pool_options`` are :class:`WorkerPool`'s (threads, extra_env, pin_cpus); they are
    fixed for the pool's life, so :attr:`key` (with ``n_workers`` and any ``extra_key``)
    tells whether a job may run here. Each worker imports the modules named in
    ``preload`` as soon as it starts.
    """

    def __init__(
        self, n_workers: int, extra_key: Any = None, preload: tuple[str, ...] = (), **pool_options
    ) -> None:
        ctx = mp.get_context("spawn")
        pipes = [ctx.Pipe(duplex=False) for _ in range(n_workers)]
        self._readers = tuple(reader for reader, _ in pipes)
        self._writers = [writer for _, writer in pipes]
        self._payload = (self._readers, tuple(preload))
        self._pool = WorkerPool(n_workers, serve_jobs, self._payload, **pool_options)
        self.n_workers = n_workers
        self.key = self.key_for(n_workers, extra_key, **pool_options)
        self.jobs_run = 0
        self.usable = True
        self._started = False

    @staticmethod
    def key_for(n_workers: int, extra_key: Any = None, **pool_options) -> tuple:
        """What must match for a job to run on a pool built with these arguments."""
        return (n_workers, _frozen(pool_options), _frozen(extra_key))

    @property
    def barrier(self):
        return self._pool.barrier

    def alive(self) -> bool:
        """Every worker is still running, as far as can be told now: a shortcut for the
        owner, not a promise (see :class:`WarmPoolLost`)."""
        procs = self._pool._procs  # same package: the one-shot pool's processes
        return self._started and len(procs) == self.n_workers and all(p.is_alive() for p in procs)

    def start(self) -> None:
        with main_module_hidden((serve_jobs, self._payload)):
            self._pool.start()
        self._started = True
        for reader in self._readers:
            reader.close()  # the workers hold them now

    def run(
        self,
        target: Callable,
        args: tuple = (),
        on_message: Callable[[str, int, Any], None] | None = None,
        tolerate_failures: bool = False,
    ) -> dict[int, Any]:
        """Run ``target(ctx, *args)`` on every worker; their ``done`` payloads.

        Raises :class:`WarmPoolLost` if a worker is lost before the job started. Any
        failure (that one, one raised, or one tolerated and reported in a payload)
        leaves the pool unusable for another job.
        """
        if not self.usable:
            raise RuntimeError("this warm pool saw a failure; start a new one")
        self.usable = False  # until this job has ended cleanly
        self._hand_out((target, args))
        results = self._pool.join(on_message, tolerate_failures=tolerate_failures)
        self.jobs_run += 1
        self.usable = not any(isinstance(r, dict) and "failed" in r for r in results.values())
        return results

    def _hand_out(self, job: tuple) -> None:
        """Give every worker ``job``, and start it once all of them have accepted it."""
        self._pool.liveness.restart()  # idle workers do not beat: silence counts from now
        for rank, writer in enumerate(self._writers):
            try:
                writer.send(job)
            except OSError:
                raise WarmPoolLost(f"worker {rank} was gone before the job started") from None
        self._await_acceptance()
        for writer in self._writers:
            # A worker that died since it accepted has started the job as far as the
            # owner knows: the supervision sees its death as any other during the job.
            with contextlib.suppress(OSError):
                writer.send(_START)

    def _await_acceptance(self) -> None:
        """Return once every worker has answered ``accepted``; :class:`WarmPoolLost` if
        one dies, or stays silent past its limit (stopped), before it answers."""
        pool, waiting = self._pool, set(range(self.n_workers))
        while waiting:
            watched = {pool._conns[rank]: rank for rank in waiting}
            watched.update({pool._procs[rank].sentinel: rank for rank in waiting})
            for ready in wait(list(watched), timeout=pool.liveness.poll_seconds):
                rank = watched[ready]
                if rank in waiting and self._accepted(rank):
                    waiting.discard(rank)
            silent = pool.liveness.silent_worker(set(range(self.n_workers)) - waiting)
            if silent is not None:
                pool._procs[silent[0]].kill()
                raise WarmPoolLost(silent[1])

    def _accepted(self, rank: int) -> bool:
        """Read worker ``rank``'s answer, which its pipe or its death made ready."""
        conn = self._pool._conns[rank]
        try:
            kind, _, payload = conn.recv() if conn.poll() else ("exited", rank, None)
        except (EOFError, OSError):
            kind = "exited"
        if kind == "accepted":
            return True
        if kind == "error":  # it could not take the job (unpickling it failed, say)
            raise worker_failure(rank, payload)
        if kind != "exited":
            raise WorkerError(f"worker {rank} sent {kind!r} before it took the job")
        proc = self._pool._procs[rank]
        proc.join(_GRACE_SECONDS)
        raise WarmPoolLost(f"worker {rank} {describe_exit(proc.exitcode)} before it took the job")

    def shutdown(self) -> None:
        """Tell idle workers to leave, then stop them as a one-shot pool is stopped
        (barrier aborted, grace period, terminate, kill). Safe to call twice; a second
        Ctrl-C cannot interrupt it."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self.usable = False
            for writer in self._writers:
                with contextlib.suppress(OSError, ValueError):
                    if self._started:
                        writer.send(None)
                    writer.close()
            if not self._started:
                for reader in self._readers:
                    reader.close()
            self._pool.shutdown()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
