"""WorkerPool: results, and fault injection in the style of loky's tests: a worker that
raises, exits or is killed makes the pool fail fast with one line, never hang."""

from __future__ import annotations

import time

import faulty_workers
import pytest

from fastdist.engine.pool import WorkerPool
from fastdist.errors import WorkerError


def test_results_and_messages_come_back():
    seen = []
    with WorkerPool(3, faulty_workers.finish, (4,)) as pool:
        results = pool.join(lambda kind, rank, payload: seen.append((kind, rank, payload)))
    assert results == {0: 40, 1: 41, 2: 42}
    assert sorted(seen) == [("progress", r, 4) for r in range(3)]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (faulty_workers.raise_on_rank_1, r"^worker 1 failed: ValueError: boom in worker$"),
        (faulty_workers.exit_3_on_rank_0, r"^worker 0 exited with code 3 before finishing$"),
        (
            faulty_workers.sigkill_self_on_rank_1,
            r"^worker 1 was killed by SIGKILL before finishing$",
        ),
    ],
)
def test_a_failing_worker_fails_the_pool_fast(target, message):
    with WorkerPool(2, target) as pool:
        started = time.monotonic()
        with pytest.raises(WorkerError, match=message):
            pool.join()
    # the survivor was blocked in the barrier: it must have been released promptly
    assert time.monotonic() - started < 5.0
    assert all(not p.is_alive() for p in pool._procs)


def test_zero_workers_is_refused():
    with pytest.raises(ValueError, match="at least one worker"):
        WorkerPool(0, faulty_workers.finish)


def test_a_warm_pool_imports_what_its_jobs_need_as_it_starts():
    from fastdist.engine.warm_pool import WarmPool

    # colorsys: in the standard library, imported by nothing fastdist loads.
    pool = WarmPool(2, preload=("colorsys",))
    try:
        pool.start()
        loaded = pool.run(faulty_workers.report_loaded, (["colorsys", "wave"],))
    finally:
        pool.shutdown()
    assert loaded == {0: ["colorsys"], 1: ["colorsys"]}


def test_a_ctrl_c_while_the_workers_start_is_not_lost(monkeypatch):
    import os
    import signal

    spawn = WorkerPool._start_all

    def interrupted_spawn(self):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the workers are being spawned
        spawn(self)

    monkeypatch.setattr(WorkerPool, "_start_all", interrupted_spawn)
    # Python's own handler, whatever an earlier in-process CLI test installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    pool = WorkerPool(2, faulty_workers.finish, (1,))
    try:
        with pytest.raises(KeyboardInterrupt):
            pool.start()  # once ignored (lost) while the workers were spawned
    finally:
        pool.shutdown()
        signal.signal(signal.SIGINT, previous)
