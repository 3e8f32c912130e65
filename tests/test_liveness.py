"""A worker that is alive but silent (SIGSTOP, a deadlock) must not hang the run: the
heartbeat in the pool's segment and worker_timeout turn it into a one-line failure
naming the worker and its last step, under the usual failure policy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_run

import fastdist
from fastdist.engine.faults import ENV_VAR
from fastdist.engine.liveness import MIN_AUTO_SECONDS, STARTUP_SECONDS, Liveness
from fastdist.errors import ConfigError, WorkerError

TINY = small_run("workers=2", "worker_timeout=2")


def test_a_stopped_worker_fails_the_run_naming_it_and_its_last_step(monkeypatch):
    # grad_avg: the other worker spins at the barrier, waiting for the frozen one.
    monkeypatch.setenv(ENV_VAR, "worker=1,step=5,kind=sigstop")
    with pytest.raises(WorkerError, match=r"worker 1 made no progress for .* \(last step 5\)"):
        fastdist.train(fastdist.compose([*TINY, "combiner=grad_avg", "steps=100000"]))


def test_respawn_recovers_from_a_stopped_worker(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, f"worker=1,step=5,kind=sigstop,once={tmp_path}/fired")
    result = fastdist.train(fastdist.compose([*TINY, "steps=24", "on_worker_failure=respawn"]))
    assert len(result.metrics["failures"]) == 1
    assert "made no progress" in result.metrics["failures"][0]["cause"]
    assert result.metrics["test_accuracy"] > 0.5


def test_continue_drops_a_stopped_worker(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "worker=1,step=5,kind=sigstop")
    result = fastdist.train(
        fastdist.compose([*TINY, "steps=24", "combiner=weight_avg", "on_worker_failure=continue"])
    )
    assert list(result.samples_seen) == [24 * 16, 5 * 16]


def _beats(n=2):
    return np.zeros((n, 8), np.int64)


def test_the_automatic_limit_is_generous_and_follows_the_slowest_step():
    beats = _beats()
    live = Liveness(beats)
    beats[:, 0] = 1
    assert live.limit(0) == STARTUP_SECONDS  # still starting: compilation may be slow
    beats[:, 2] = 1
    assert live.limit(0) == MIN_AUTO_SECONDS
    beats[1, 3] = 30 * 10**9  # a 30 s step seen on worker 1
    assert live.limit(0) == 300.0
    assert Liveness(beats, 5).limit(0) == 5.0


def test_a_worker_waiting_at_the_barrier_is_not_blamed():
    import time

    beats = _beats()
    beats[:, 2] = 1
    now = time.monotonic_ns()
    beats[0, 0] = now  # waiting at the barrier: beats
    beats[1, 0], beats[1, 1] = now - 10 * 10**9, 7  # silent for 10 s after step 7
    rank, message = Liveness(beats, 3).silent_worker(set())
    assert rank == 1 and "last step 7" in message and "worker_timeout=3" in message
    assert Liveness(beats, 3).silent_worker({1}) is None  # finished workers are not watched


def test_worker_timeout_must_be_positive():
    with pytest.raises(ConfigError, match="worker_timeout"):
        fastdist.train(fastdist.compose([*small_run(), "worker_timeout=0"]))
