"""A worker process's start-up and end: the function every pool worker is spawned with.

:func:`bootstrap` prepares the process (signals, death with the coordinator, CPU
affinity, the pool's barrier and heartbeat row), runs ``target(ctx, *args)``, and
reports a failure over the pipe before leaving. It runs in the child only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable

from fastdist.engine.barrier import SpinBarrier
from fastdist.engine.shm import ArenaSpec, SharedArena
from fastdist.engine.worker_context import WorkerContext
from fastdist.engine.worker_errors import error_report

__all__ = ["bootstrap"]

_PR_SET_PDEATHSIG = 1


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


def bootstrap(
    target: Callable,
    rank: int,
    n_workers: int,
    args: tuple,
    conn,
    sync_spec: ArenaSpec,
    cpus: tuple[int, ...] | None,
    parent: int,
) -> None:
    """Worker ``rank``'s whole life: set up, run ``target(ctx, *args)``, report, leave."""
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
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("error", rank, error_report(exc)))
        os._exit(1)
    finally:
        conn.close()
        del ctx
        sync.close()
