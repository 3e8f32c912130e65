"""Holding Ctrl-C and SIGTERM back while something must finish (creating or releasing
a shared-memory segment, stopping the workers).

``pthread_sigmask`` is not enough: it blocks a signal for the calling thread only, and
a coordinator has other threads (BLAS, Numba, a monitor) that may receive it; CPython
then runs the Python handler in the main thread at the next bytecode, in the middle of
the cleanup. Instead, while the block runs, the handlers themselves are swapped for
ones that only remember the signal; afterwards the old handlers are put back and the
remembered signal is delivered again, so it is neither lost nor early.
"""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["deferred_signals"]

_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_signals():
    """Run the block with SIGINT/SIGTERM held back; deliver them once it is done.

    Nested uses are cheap (the inner one sees the recording handlers and steps aside);
    outside the main thread, where handlers cannot change, the block simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in _DEFERRED}
    if any(getattr(h, "_fastdist_deferring", False) for h in previous.values()):
        yield  # an outer block already defers
        return
    pending: list[int] = []

    def remember(signum, frame) -> None:
        pending.append(signum)

    remember._fastdist_deferring = True  # type: ignore[attr-defined]
    for sig in _DEFERRED:
        if previous[sig] is not None:  # None: installed from C; leave it alone
            signal.signal(sig, remember)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        for signum in dict.fromkeys(pending):  # each signal once, in arrival order
            signal.raise_signal(signum)
