"""Warm jobs equal cold jobs bitwise, in history.csv as in metrics.json, over a mixed
sequence of jobs; and a sweep survives a warm worker killed between two jobs."""

from __future__ import annotations

import functools
import os
import signal

import numpy as np
import pytest

from fastdist.combiners.exchange import gradient_mean
from fastdist.engine.warm_pool import WarmPool, WarmPoolLost
from fastdist.run import pool_cache
from fastdist.run.config import compose
from fastdist.run.coordinator import train
from fastdist.run.history import History
from fastdist.run.pool_cache import shutdown_warm_pool, warm_pool
from tests import faulty_workers
from tests.conftest import small_run

# history.csv's columns that measure time rather than training.
_TIMING = ("wall_time", "samples_per_second")


@pytest.fixture(autouse=True)
def no_pool_left():
    yield
    shutdown_warm_pool()


def _run(job: tuple[str, ...], warm: bool):
    return train(compose(small_run(*job, "history.every=1", f"pool.reuse={str(warm).lower()}")))


@functools.cache
def _cold(job: tuple[str, ...]):
    """A job's cold run (workers of its own), computed once per test session: starting
    workers is most of a tiny job's time."""
    return _run(job, warm=False)


def _assert_same_run(hot, cold, job) -> None:
    """Bitwise: parameters, the metrics that score the model, every history value."""
    assert np.array_equal(hot.worker_params, cold.worker_params), job
    for key in ("test_accuracy", "test_loss"):
        assert hot.metrics[key] == cold.metrics[key], (job, key)
    untimed = [{k: v for k, v in row.items() if k not in _TIMING} for row in hot.history]
    assert untimed == [{k: v for k, v in row.items() if k not in _TIMING} for row in cold.history]
    assert len(hot.history) > 1, job


def test_history_adds_the_workers_losses_in_rank_order():
    # 0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1 in floating point: the arrival order of the
    # reports (timing) must not decide the row's train loss.
    rows = []
    for order in ((0, 1, 2), (2, 1, 0), (1, 2, 0)):
        history = History(
            workers=3,
            batch=1,
            steps_per_epoch=10,
            lr=lambda step: 0.1,
            exchange=gradient_mean(),
            total_steps=10,
            sync_bytes=0,
        )
        history.begin(0, start=0.0)
        for rank in order:
            payload = {"step": 1, "time": 1.0, "loss_sum": (0.1, 0.2, 0.3)[rank], "seen": 1}
            history.on_step(rank, {**payload, "evaluate": False, "snapshot": False})
        history.close()
        rows.append(history.rows[0]["train_loss"])
    assert rows == [(0.1 + 0.2 + 0.3) / 3] * 3


# Jobs of a few steps, in an order where each follows a different kind of job: the
# models, optimizers, partitions and combiners all change from one job to the next.
# The first job of each list runs on a fresh pool: it is a cold run itself.
_CNN = ("model=cnn", "model.channels=[2]", "model.hidden=[]")  # 1-D: rows of 10
_MIXED_JOBS = {
    3: [
        ("optimizer=sgd", "partition=dirichlet", "combiner=local_sgd", "combiner.period=2"),
        ("optimizer=adamw", "partition=dirichlet", "combiner=scaffold", "model.hidden=[16]"),
        (*_CNN, "optimizer=sgd", "combiner=grad_avg"),
        ("optimizer=adamw", "combiner=weight_avg"),
    ],
    2: [
        ("optimizer=sgd", "combiner=scaffold"),
        (*_CNN, "optimizer=adamw", "partition=dirichlet", "combiner=local_sgd"),
        ("optimizer=adamw", "partition=dirichlet", "combiner=grad_avg"),
    ],
}


def _mixed_jobs(workers: int) -> list[tuple[str, ...]]:
    return [(*job, f"workers={workers}", "steps=6", "seed=3") for job in _MIXED_JOBS[workers]]


@pytest.mark.parametrize("workers", sorted(_MIXED_JOBS))
def test_mixed_jobs_on_one_warm_pool_match_cold_jobs_bitwise(workers):
    jobs = _mixed_jobs(workers)
    warm = [_run(job, warm=True) for job in jobs]
    assert warm_pool().jobs_run == len(jobs)  # one pool ran them all, the first cold
    shutdown_warm_pool()
    for job, hot in zip(jobs[1:], warm[1:]):
        _assert_same_run(hot, _cold(job), job)


def _kill(pool: WarmPool, rank: int) -> None:
    os.kill(pool._pool._procs[rank].pid, signal.SIGKILL)  # no wait: it dies meanwhile


def test_a_sweep_goes_on_after_a_warm_worker_is_killed_between_jobs(monkeypatch):
    first, second, third = _mixed_jobs(2)
    _run(first, warm=True)
    _kill(warm_pool(), 1)  # while idle, before the next job is prepared
    acquire, acquired = pool_cache._acquire, []

    def then_killed(*args):
        # The third job's pool (the second's, kept) passes its check, and a worker is
        # killed right after: the race no check made before handing out a job closes.
        pool, kept = acquire(*args)
        acquired.append(pool)
        if len(acquired) == 2:
            assert kept and pool.jobs_run == 1
            _kill(pool, 0)
        return pool, kept

    monkeypatch.setattr(pool_cache, "_acquire", then_killed)
    warm = [_run(second, warm=True), _run(third, warm=True)]
    lost = acquired[1]
    assert not lost.alive() and warm_pool() is not lost
    assert warm_pool().jobs_run == 1  # the third job ran on fresh workers, kept after it
    shutdown_warm_pool()
    for job, hot in zip((second, third), warm):
        _assert_same_run(hot, _cold(job), job)


def test_a_lost_worker_fails_the_job_before_any_worker_started_it():
    pool = WarmPool(2)
    try:
        pool.start()
        assert pool.run(faulty_workers.finish, (1,)) == {0: 10, 1: 11}
        _kill(pool, 1)
        with pytest.raises(WarmPoolLost, match="worker 1 .*before"):
            pool.run(faulty_workers.finish, (2,))
        assert not pool.usable
        # Worker 0 accepted the job (its answer may still be in the pipe, unread when
        # worker 1's death was seen) and waits for a start that never comes: it sends
        # nothing else (running the job, it would send "progress" at once).
        conn, sent = pool._pool._conns[0], []
        while conn.poll(0.2):
            sent.append(conn.recv()[0])
        assert set(sent) <= {"accepted"}, sent
    finally:
        pool.shutdown()


def test_idle_time_between_jobs_is_not_silence():
    job = ("steps=4", "worker_timeout=5")
    _run(job, warm=True)
    # As if the sweep had spent a minute preparing the next job: the workers' last
    # beats, from the previous job, are that old.
    warm_pool()._pool.liveness._beats[:, 0] -= 60 * 10**9
    _run(job, warm=True)
    assert warm_pool().jobs_run == 2
